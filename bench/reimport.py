"""What a re-import costs the workers, and what each output size costs.

    .venv/bin/python bench/reimport.py [--images 200] [--workers N]

Runs the service as in production, on loopback: tests/topology.Topology starts what the Procfile
names (gunicorn, `--workers` x `python -m worker`, the forking RQ workers, default one per core,
and `python -m worker --cron`) on a real redis-server, moto's S3 server and the MongoDB wire
stand-in, each a process of its own, with the service's default settings (as bench/e2e.py's
`run_topology`); the corpus is served over loopback by bench/imageserver.py with `ETag` and
`Last-Modified`. After a warm-up batch (not measured), it uploads to gunicorn, one after the
other, each when the one before has finished:

1. a CSV of `--images` distinct corpus URLs (`?copy=N`), no sizes: a first import;
2. the same CSV again: a re-import, every image answered `304 Not Modified`;
3. and 4. the same pair on fresh URLs under `/ignore-validators/`, whose server sends validators
   but answers `200` with the bytes every time: the re-import recognises them by their SHA-256;
5. and 6. fresh URLs with one size, then with three: what sizes cost;
7. the three sizes' CSV again: a re-import that copies four objects per image.

For each batch it measures the CPU seconds of the worker processes and their work-horses (one
per job, reaped before the figure is read: every worker is idle again) from the upload to the
batch's end (the parse job included), and moto's and the image server's. It prints a table,
the ratio second/first of each re-import (target <= 0.05) and each size count's worker CPU per
image against no sizes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
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
    from tests.topology import Topology
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    names = [item.name for item in load_corpus()]
    settings = e2e.production_settings()
    images, image_base = processes.start_image_server(corpus_dir(), validators=True)
    topology = None
    try:
        spec = {"image_base": image_base, "names": names, "images": args.images}
        topology = Topology(workers=args.workers, **settings)
        others = {"moto (S3)": topology.s3.pid, "image server": images.pid}
        # A warm-up batch, not measured: the first jobs create indexes and warm the servers.
        _one_batch(topology, _csv({**spec, "images": min(48, args.images)}, 9, ""), "",
                   "warm-up", others)
        steps = [_one_batch(topology, _csv(spec, url_set, prefix), sizes, label, others)
                 for label, url_set, prefix, sizes in STEPS]
    finally:
        if topology is not None:
            topology.stop()
        processes.stop(images)
    report({"steps": steps, "images": args.images, "workers": args.workers,
            "chunk_size": settings["CHUNK_SIZE"],
            "image_concurrency": settings["IMAGE_CONCURRENCY"]}, len(names))


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


def _one_batch(topology, body: bytes, sizes: str, label: str, others: dict) -> dict:
    import requests
    workers = {f"worker {n}": w.pid for n, w in enumerate(topology.workers)}
    cpu0 = {name: e2e.process_tree_cpu(pid) for name, pid in {**workers, **others}.items()}
    wall0 = time.perf_counter()
    response = requests.post(topology.url("/api/v1/batches"), params={"sizes": sizes},
                             data=body, headers={"Content-Type": "text/csv"}, timeout=60)
    if response.status_code != 202:
        raise SystemExit(f"upload refused: {response.status_code} {response.text[:300]}")
    batch_url = topology.url(f"/api/v1/batches/{response.json()['id']}")
    while (batch := requests.get(batch_url, timeout=30).json())["status"] in ("queued",
                                                                              "processing"):
        time.sleep(0.05)
    wall = time.perf_counter() - wall0
    e2e.wait_workers_idle(topology)
    cpu = {name: e2e.process_tree_cpu(pid) - cpu0[name]
           for name, pid in {**workers, **others}.items()}
    worker_cpu = sum(cpu[name] for name in workers)
    return {"label": label, "sizes": sizes, "status": batch["status"],
            "images": batch["images"]["total"], "processed": batch["images"]["processed"],
            "reused": batch["images"].get("reused", 0), "worker_cpu_s": worker_cpu,
            "ms_per_image": 1000 * worker_cpu / max(1, batch["images"]["total"]),
            "moto_cpu_s": cpu["moto (S3)"], "image_server_cpu_s": cpu["image server"],
            "wall_s": wall}


if __name__ == "__main__":
    main(sys.argv[1:])
