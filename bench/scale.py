"""How the service grows with the rows of a file: upload, parse, first image, output.csv, pages.

    python bench/scale.py [--sizes 10000,100000] [--million] [--images]

For each size, fresh processes: an API process and a worker process that share one SQLite file
(the stores' SQLite implementation) and a real redis-server; S3 is moto in a process of its own.
The worker works as `make run` does: its main thread on the batch and image queues, one more
thread on the image queue, so images are processed while the file is read. Every row has one URL
of the same tiny JPEG served from loopback (`?n=` makes each distinct), so rows, not encoding,
are measured.

Figures per size: upload seconds and the API process's peak RSS (VmHWM, start-up included);
parse rows/s (upload answered -> `rows.done_reading`); the worker's peak RSS while reading;
seconds from the upload's answer to the first processed image; `output.csv` time to first byte
and MB/s; the latency of the first and the last products page (limit 500, following cursors);
the SQLite file's size (its WAL included); with --images, images/s until the batch is
finished. Then the ratio of each figure to the
smallest size's, so flat (≈1) and linear (≈ the size ratio) are visible at a glance.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402 - needs ROOT on sys.path
from bench.tables import aligned  # noqa: E402

PAGE = 500


def vm_kib(pid: int, field: str) -> int:
    """VmRSS or VmHWM (peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- the two processes

def serve(role: str, sqlite_path: str) -> None:
    """`api`: the Flask app on a free loopback port (printed); `worker`: the queues."""
    import logging
    logging.basicConfig(level="WARNING")
    from infra import stores
    from infra.stores.sqlite import SqliteStores
    stores.use(SqliteStores(sqlite_path))
    if role == "api":
        from werkzeug.serving import make_server

        from api import create_app
        from infra.settings import get_settings
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = make_server("127.0.0.1", 0, create_app(get_settings()), threaded=True)
        print(f"port {server.server_port}", flush=True)
        server.serve_forever()
    else:
        from worker.runner import IMAGE_QUEUES, run_worker, start_image_worker
        start_image_worker()
        run_worker(names=IMAGE_QUEUES)


# --------------------------------------------------------------------------- one size

def make_csv(path: Path, rows: int, image_url: str) -> int:
    with open(path, "w") as f:
        f.write("S. No.,Product Name,Input Image Urls\n")
        for n in range(1, rows + 1):
            f.write(f"{n},Product {n},{image_url}?n={n}\n")
    return path.stat().st_size


def run_size(rows: int, services, env: dict, workdir: Path, wait_images: bool) -> dict:
    import requests

    csv_path = workdir / f"rows{rows}.csv"
    csv_bytes = make_csv(csv_path, rows, services.image_base + "/tiny.jpg")
    sqlite_path = str(workdir / f"scale{rows}.sqlite3")
    me = str(Path(__file__).resolve())
    api, port = processes.start_announcing([sys.executable, me, "serve", "api", sqlite_path],
                                           "the API process", env=env)
    worker = None
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        worker = subprocess.Popen([sys.executable, me, "serve", "worker", sqlite_path], env=env)
        _wait_for_workers(env["REDIS_URL"], 2)  # its two RQ workers, so start-up is not timed
        result = {"rows": rows, "csv_mb": csv_bytes / 1e6}

        started = time.perf_counter()
        with open(csv_path, "rb") as body:
            answer = requests.post(f"{base}/batches", data=body,
                                   headers={"Content-Type": "text/csv"}, timeout=600)
        uploaded = time.perf_counter()
        if answer.status_code != 202:
            raise RuntimeError(f"upload refused: {answer.status_code} {answer.text[:300]}")
        result["upload_s"] = uploaded - started
        result["api_peak_mb"] = vm_kib(api.pid, "VmHWM") / 1024
        batch_url = f"{base}/batches/{answer.json()['id']}"

        first_image = done_reading = None
        worker_peak = 0
        while True:
            batch = requests.get(batch_url, timeout=60).json()
            at = time.perf_counter() - uploaded
            worker_peak = max(worker_peak, vm_kib(worker.pid, "VmHWM"))
            if first_image is None and batch["images"]["processed"] > 0:
                first_image = at
            if batch["rows"]["done_reading"] or batch["status"] in ("failed", "cancelled"):
                done_reading = at
                break
            time.sleep(0.05)
        if batch["rows"]["total"] != rows:
            raise RuntimeError(f"read {batch['rows']} of {rows} rows ({batch['status']})")
        result["parse_rows_s"] = rows / done_reading
        result["worker_peak_mb"] = worker_peak / 1024

        fetch = time.perf_counter()
        with requests.get(batch_url + "/output.csv", stream=True, timeout=600) as response:
            size, ttfb = 0, None
            for part in response.iter_content(64 * 1024):
                if ttfb is None:
                    ttfb = time.perf_counter() - fetch
                size += len(part)
        result["csv_ttfb_s"] = ttfb
        result["csv_mb_s"] = size / 1e6 / (time.perf_counter() - fetch)

        cursor, pages = None, []
        while True:
            params = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            t = time.perf_counter()
            page = requests.get(batch_url + "/products", params=params, timeout=60).json()
            pages.append(time.perf_counter() - t)
            cursor = page.get("next_cursor")
            if not cursor:
                break
        result["page_first_ms"] = pages[0] * 1000
        result["page_last_ms"] = pages[-1] * 1000

        while first_image is None or wait_images:
            batch = requests.get(batch_url, timeout=60).json()
            at = time.perf_counter() - uploaded
            if first_image is None and batch["images"]["processed"] > 0:
                first_image = at
            if batch["status"] not in ("queued", "processing"):
                done = batch["images"]["processed"] + batch["images"]["failed"]
                result["images_s"] = done / at
                break
            if not wait_images and first_image is not None:
                break
            time.sleep(0.1)
        result["first_image_s"] = first_image
        result["store_mb"] = sum(os.path.getsize(p) for p in (sqlite_path, sqlite_path + "-wal")
                                 if os.path.exists(p)) / 1e6
        return result
    finally:
        for proc in (worker, api):
            processes.stop(proc, grace=20)


def _wait_for_workers(redis_url: str, count: int, timeout: float = 60) -> None:
    from redis import Redis
    from rq import Worker
    connection = Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    while len(Worker.all(connection=connection)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker process did not start")
        time.sleep(0.05)


# --------------------------------------------------------------------------- the table

COLUMNS = [("upload_s", "upload s", "{:.2f}"), ("api_peak_mb", "API peak MB", "{:.0f}"),
           ("parse_rows_s", "parse rows/s", "{:.0f}"),
           ("worker_peak_mb", "worker peak MB", "{:.0f}"),
           ("first_image_s", "1st image s", "{:.2f}"), ("csv_ttfb_s", "csv TTFB s", "{:.3f}"),
           ("csv_mb_s", "csv MB/s", "{:.1f}"), ("page_first_ms", "page 1 ms", "{:.0f}"),
           ("page_last_ms", "last page ms", "{:.0f}"), ("store_mb", "SQLite MB", "{:.0f}"),
           ("images_s", "images/s", "{:.0f}")]


def table(results: list[dict]) -> str:
    columns = [c for c in COLUMNS if any(c[0] in r for r in results)]
    head = ["rows", "CSV MB"] + [label for _, label, _ in columns]
    lines = [head]
    for r in results:
        lines.append([f"{r['rows']:,}", f"{r['csv_mb']:.1f}"] +
                     [fmt.format(r[key]) if r.get(key) is not None else "-"
                      for key, _, fmt in columns])
    base = results[0]
    for r in results[1:]:
        lines.append([f"x{r['rows'] / base['rows']:.0f} ratio", ""] +
                     [f"{r[key] / base[key]:.2f}" if r.get(key) and base.get(key) else "-"
                      for key, _, _ in columns])
    return aligned(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="row counts, comma-separated")
    parser.add_argument("--million", action="store_true", help="add a 1,000,000-row run")
    parser.add_argument("--images", action="store_true",
                        help="also wait for every image and report images/s")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([1_000_000] if args.million else [])

    from PIL import Image

    from bench.e2e import Services
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "corpus"
        corpus.mkdir()
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, "JPEG", quality=90)
        (corpus / "tiny.jpg").write_bytes(buffer.getvalue())
        services = Services(corpus)
        try:
            env = services.env("scale-bench")
            env.update({
                # Not used (the stores are SQLite), but the settings want all three services.
                "MONGO_URL": "mongodb://unused.invalid",
                "MAX_UPLOAD_BYTES": str(2 * 1024 ** 3),
                "PYTHONPATH": str(ROOT),
            })
            results = []
            for rows in sizes:
                results.append(run_size(rows, services, env, workdir, args.images))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        finally:
            services.stop()
    print(table(results))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
