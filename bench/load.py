"""Load on the real API: bounded concurrent uploads and status polls against gunicorn.

Starts the production topology on loopback (tests/topology.py: gunicorn with WEB_CONCURRENCY
workers, two forking RQ workers, cron, redis-server, moto's S3 server, the MongoDB wire
stand-in), then sends, with at most --concurrency requests in flight:

1. `GET /healthz` (no I/O): the baseline, measured in the same run on the same machine;
2. `POST /api/v1/batches`: --uploads small CSVs (--rows rows, one image URL each, served by a
   loopback image server), while the workers process them;
3. `GET /api/v1/batches/{id}`: --polls status reads spread over the uploaded batches.

Prints one row per kind: requests, errors (non-2xx or no answer), requests/s, p50 and p99
latency, and requests/s as a ratio of the baseline's. Not a test: nothing is asserted.

    .venv/bin/python bench/load.py [--concurrency 8] [--uploads 100] [--polls 1000]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.image_factory import jpeg  # noqa: E402
from tests.servers import HttpServer, Route  # noqa: E402
from tests.topology import Topology  # noqa: E402


class Recorder:
    """Latencies and errors of one kind of request, from many threads."""

    def __init__(self, name: str):
        self.name = name
        self.latencies: list[float] = []
        self.errors = 0
        self.started = self.finished = 0.0
        self._lock = threading.Lock()

    def call(self, session: requests.Session, method: str, url: str, **kwargs):
        began = time.perf_counter()
        try:
            response = session.request(method, url, timeout=60, **kwargs)
            ok = 200 <= response.status_code < 300
        except requests.RequestException:
            response, ok = None, False
        elapsed = time.perf_counter() - began
        with self._lock:
            self.latencies.append(elapsed)
            self.errors += not ok
        return response if ok else None

    def row(self, baseline_rps: float | None) -> list[str]:
        wall = max(self.finished - self.started, 1e-9)
        rps = len(self.latencies) / wall
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
        ratio = f"{rps / baseline_rps:.2f}" if baseline_rps else "1.00"
        return [self.name, str(len(self.latencies)), str(self.errors), f"{rps:.1f}",
                f"{statistics.median(ordered) * 1000:.1f}" if ordered else "-",
                f"{p99 * 1000:.1f}", ratio]


def run(kind: Recorder, count: int, concurrency: int, work) -> None:
    """`count` calls of work(session, n) with at most `concurrency` in flight."""
    local = threading.local()

    def one(n: int):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return work(local.session, n)

    kind.started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(count)))
    kind.finished = time.perf_counter()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=5)
    parser.add_argument("--web-concurrency", default="2")
    args = parser.parse_args()

    images = HttpServer()
    images.routes["/img.jpg"] = Route(jpeg((64, 48)))
    print("starting the topology (gunicorn, 2 workers, cron, redis, S3, MongoDB stand-in)...",
          file=sys.stderr)
    topo = Topology(WEB_CONCURRENCY=args.web_concurrency)
    try:
        health = Recorder("GET /healthz (baseline)")
        run(health, args.polls, args.concurrency,
            lambda s, n: health.call(s, "GET", topo.url("/healthz")))

        uploads = Recorder("POST /api/v1/batches")

        def upload(session, n):
            lines = ["S. No.,Product Name,Input Image Urls"]
            lines += [f"{r},Item {r},{images.url('/img.jpg')}?b={n}&r={r}"
                      for r in range(1, args.rows + 1)]
            body = io.BytesIO("\n".join(lines).encode())
            response = uploads.call(session, "POST", topo.url("/api/v1/batches"),
                                    files={"file": ("load.csv", body)})
            return response.json()["id"] if response is not None else None
        ids = [i for i in run(uploads, args.uploads, args.concurrency, upload) if i]

        polls = Recorder("GET /api/v1/batches/{id}")
        if ids:
            run(polls, args.polls, args.concurrency, lambda s, n: polls.call(
                s, "GET", topo.url(f"/api/v1/batches/{ids[n % len(ids)]}")))

        baseline = len(health.latencies) / max(health.finished - health.started, 1e-9)
        header = ["request", "count", "errors", "req/s", "p50 ms", "p99 ms", "× baseline"]
        rows = [health.row(None), uploads.row(baseline)]
        if polls.latencies:
            rows.append(polls.row(baseline))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print(f"\nconcurrency {args.concurrency}, gunicorn workers {args.web_concurrency}, "
              f"{args.rows} rows per upload")
        for r in [header, *rows]:
            print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                            for i, (cell, w) in enumerate(zip(r, widths))))
    finally:
        topo.stop()
        images.stop()


if __name__ == "__main__":
    main()
