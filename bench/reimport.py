"""What a re-import costs the workers, and what each output size costs.

    .venv/bin/python bench/reimport.py [--images 200] [--workers N]

Starts the outside processes of the end-to-end benchmark (bench/e2e.py `Services`: the corpus
served over loopback by bench/imageserver.py with `ETag`/`Last-Modified`, redis-server, moto's S3
in its own process) and the service as in production: an API process (this file's `child`,
werkzeug, threaded) and `--workers` worker processes (default: one per core) sharing one SQLite
file. After a warm-up batch (not measured: a worker's first jobs pay for its imports), it
uploads, one after the other, each when the one before has finished:

1. a CSV of `--images` distinct corpus URLs (`?copy=N`), no sizes: a first import;
2. the same CSV again: a re-import, every image answered `304 Not Modified`;
3. and 4. the same pair on fresh URLs under `/ignore-validators/`, whose server sends validators
   but answers `200` with the bytes every time: the re-import recognises them by their SHA-256;
5. and 6. fresh URLs with one size, then with three: what sizes cost;
7. the three sizes' CSV again: a re-import that copies four objects per image.

For each batch it measures the worker processes' CPU seconds from the upload to the batch's
end (utime + stime from /proc, the parse job included), and moto's and the image server's.
It prints a table, the ratio second/first of each re-import (target <= 0.05) and each size
count's worker CPU per image against no sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import e2e, processes  # noqa: E402 - needs ROOT on sys.path
from bench.imageserver import IGNORING  # noqa: E402

THREE_SIZES = "thumb=200,medium=800,large=1600"
# (label, URL set, path prefix, sizes): batches with the same URL set and sizes are the same CSV.
STEPS = [
    ("first import", 0, "", ""),
    ("re-import (304)", 0, "", ""),
    ("first import", 1, IGNORING, ""),
    ("re-import (same bytes)", 1, IGNORING, ""),
    ("one size", 2, "", "thumb=200"),
    ("three sizes", 3, "", THREE_SIZES),
    ("re-import (304)", 3, "", THREE_SIZES),
]


def main(argv: list[str]) -> None:
    from bench.pipeline import corpus_dir, load_corpus
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    names = [item.name for item in load_corpus()]
    services = e2e.Services(corpus_dir(), validators=True)
    try:
        env = services.env("bench-" + uuid.uuid4().hex[:8])
        # Settings want a MongoDB URL beside Redis and S3; the stores are SQLite's (never used).
        env.update({"MONGO_URL": "mongodb://mongomock.invalid",
                    "MONGO_DB": "bench_" + uuid.uuid4().hex[:8]})
        spec = {"image_base": services.image_base, "names": names, "images": args.images,
                "workers": args.workers, "pids": services.pids()}
        with tempfile.TemporaryFile("w+") as errors:
            child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "child",
                                    json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                                   stderr=errors, text=True)
            lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
            if child.returncode != 0 or not lines:
                errors.seek(0)
                sys.stderr.write(errors.read()[-5000:])
                raise SystemExit(f"the service process failed (exit {child.returncode})")
    finally:
        services.stop()
    report(json.loads(lines[-1]), len(names))


def report(result: dict, corpus_files: int) -> None:
    steps = result["steps"]
    print(f"{result['images']} images a batch ({corpus_files} corpus files repeated), "
          f"{result['workers']} worker process(es), chunk size {result['chunk_size']}, "
          f"image concurrency {result['image_concurrency']}")
    print(f"{'batch':<24}{'sizes':<33}{'status':<11}{'reused':>7}{'worker CPU s':>14}"
          f"{'ms/image':>10}{'moto CPU s':>12}{'img server':>12}{'wall s':>8}")
    for step in steps:
        print(f"{step['label']:<24}{step['sizes'] or '-':<33}{step['status']:<11}"
              f"{step['reused']:>7}{step['worker_cpu_s']:>14.2f}{step['ms_per_image']:>10.2f}"
              f"{step['moto_cpu_s']:>12.2f}{step['image_server_cpu_s']:>12.2f}"
              f"{step['wall_s']:>8.1f}")
    print()
    for first, second in ((steps[0], steps[1]), (steps[2], steps[3]), (steps[5], steps[6])):
        ratio = second["worker_cpu_s"] / first["worker_cpu_s"]
        print(f"ratio second/first, {second['label']}"
              f"{', ' + second['sizes'] if second['sizes'] else ''}: {ratio:.3f} "
              f"({'meets' if ratio <= 0.05 else 'misses'} the 0.05 target)")
    base = steps[0]["ms_per_image"]
    for step in (steps[0], steps[4], steps[5]):
        count = len(step["sizes"].split(",")) if step["sizes"] else 0
        print(f"sizes: {count} ({step['sizes'] or 'none'}): {step['ms_per_image']:.1f} ms/image "
              f"of worker CPU, x{step['ms_per_image'] / base:.2f} against no sizes")


# --------------------------------------------------------------------------- the service process

def child(spec: dict) -> None:
    import logging
    import threading

    from werkzeug.serving import make_server

    from infra import stores
    from infra.settings import get_settings
    from infra.stores.sqlite import SqliteStores

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    settings = get_settings()
    sqlite_path = os.path.join(tempfile.mkdtemp(prefix="bench-reimport-"), "bench.sqlite3")
    stores.use(SqliteStores(sqlite_path))
    from api import create_app
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    api = f"http://127.0.0.1:{server.server_port}/api/v1"

    workers = e2e.start_workers(sqlite_path, spec["workers"], settings.redis_url)
    steps = []
    try:
        # A warm-up batch, not measured: a worker's first jobs pay for its imports and caches.
        _one_batch(api, _csv({**spec, "images": min(48, spec["images"])}, 9, ""), "",
                   "warm-up", workers, spec["pids"])
        for label, url_set, prefix, sizes in STEPS:
            body = _csv(spec, url_set, prefix)
            steps.append(_one_batch(api, body, sizes, label, workers, spec["pids"]))
    finally:
        processes.stop_all(workers)
        server.shutdown()
    print(json.dumps({"steps": steps, "images": spec["images"], "workers": len(workers),
                      "chunk_size": settings.chunk_size,
                      "image_concurrency": settings.image_concurrency}), flush=True)


def _csv(spec: dict, url_set: int, prefix: str) -> bytes:
    """`images` distinct URLs of the corpus: its files in turn, `?copy=` numbering the rounds;
    each URL set its own range of copies."""
    names = spec["names"]
    lines = ["S. No.,Product Name,Input Image Urls"]
    for n in range(spec["images"]):
        copy = url_set * 100_000 + n // len(names)
        lines.append(f"{n + 1},Product {n + 1},"
                     f"{spec['image_base']}/{prefix}{names[n % len(names)]}?copy={copy}")
    return ("\n".join(lines) + "\n").encode()


def _one_batch(api: str, body: bytes, sizes: str, label: str, workers, pids: dict) -> dict:
    import requests

    from infra import stores
    watched = {f"worker {n}": proc.pid for n, proc in enumerate(workers)}
    cpu0 = {name: e2e.cpu_seconds(pid) for name, pid in {**watched, **pids}.items()}
    wall0 = time.perf_counter()
    response = requests.post(f"{api}/batches", params={"sizes": sizes}, data=body,
                             headers={"Content-Type": "text/csv"}, timeout=60)
    if response.status_code != 202:
        raise SystemExit(f"upload refused: {response.status_code} {response.text[:300]}")
    batch_id = response.json()["id"]
    while not (batch := stores.batches().get(batch_id, any_owner=True)).finished:
        time.sleep(0.05)
    wall = time.perf_counter() - wall0
    cpu = {name: e2e.cpu_seconds(pid) - cpu0[name] for name, pid in {**watched, **pids}.items()}
    worker_cpu = sum(cpu[name] for name in watched)
    return {"label": label, "sizes": sizes, "status": batch.status.value,
            "images": batch.images_total, "processed": batch.images_processed,
            "reused": batch.images_reused or 0, "worker_cpu_s": worker_cpu,
            "ms_per_image": 1000 * worker_cpu / max(1, batch.images_total),
            "moto_cpu_s": cpu.get("moto (S3)", 0.0),
            "image_server_cpu_s": cpu.get("image server", 0.0), "wall_s": wall}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child(json.loads(sys.argv[2]))
    else:
        main(sys.argv[1:])
