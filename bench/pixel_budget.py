"""Peak memory of a worker process decoding large images, by MAX_PIXELS_IN_FLIGHT.

Each run is a fresh process that pushes N large RGBA PNGs (alpha: they go to WebP, the costliest
path) through the chunk job's own encode step (worker.chunks._encode: the pixel budget, then one
encode slot per core) from IMAGE_CONCURRENCY threads, and reports its peak RSS (ru_maxrss) and
wall time. The baseline is a budget too large to ever hold an image back (the behaviour without
a budget); the other rows allow 1 and 2 images in flight.

    python bench/pixel_budget.py [--size 2500] [--images 4] [--threads 4]

Prints a table and, per row, the ratio of its peak and time to the baseline's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The children run with a fixed glibc mmap threshold, as README advises for workers: with glibc's
# default (a threshold that grows after big frees), freed image buffers stay in the heap and the
# peak reflects what was ever decoded, not what is decoded at once. BENCH_ENV="NAME=value ..."
# replaces it (BENCH_ENV=" " for glibc's default).
EXTRA_ENV = dict(v.split("=", 1) for v in os.environ.get(
    "BENCH_ENV", "MALLOC_MMAP_THRESHOLD_=1048576").split() if "=" in v)


def child(size: int, images: int, threads: int, budget: int) -> None:
    sys.path.insert(0, str(ROOT))
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from infra.settings import Settings
    from worker import chunks

    noise = Image.effect_noise((size, size), 64).convert("L")
    rgba = Image.merge("RGBA", (noise, noise.rotate(90), noise.rotate(180), noise.rotate(270)))
    out = io.BytesIO()
    rgba.save(out, "PNG", compress_level=1)
    data = out.getvalue()
    del rgba, noise, out
    settings = Settings(_env_file=None, max_pixels_in_flight=budget,
                        max_image_pixels=max(size * size, 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _n: chunks._encode(data, settings), range(images)))
    print(json.dumps({"seconds": time.perf_counter() - started, "before_kb": before,
                      "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "budget_peak": chunks.pixel_budget(budget).peak}))


def run(size: int, images: int, threads: int, budget: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(size), str(images), str(threads), str(budget)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "MALLOC_ARENA_MAX": "2", **EXTRA_ENV})
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(*(int(v) for v in sys.argv[2:6]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2500)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    pixels = args.size * args.size
    rows = [("no limit (baseline)", 10**12), ("2 images", 2 * pixels), ("1 image", pixels)]
    print(f"{args.images} RGBA PNGs of {args.size}x{args.size} ({pixels / 1e6:.1f} MP) -> WebP, "
          f"{args.threads} threads, {len(os.sched_getaffinity(0))} encode slots")
    print(f"{'MAX_PIXELS_IN_FLIGHT':<22}{'peak RSS MB':>12}{'over start MB':>14}{'seconds':>9}"
          f"{'peak/base':>10}{'time/base':>10}")
    base = None
    for name, budget in rows:
        got = run(args.size, args.images, args.threads, budget)
        peak, grown = got["peak_kb"] / 1024, (got["peak_kb"] - got["before_kb"]) / 1024
        base = base or (grown, got["seconds"])
        print(f"{name:<22}{peak:>12.0f}{grown:>14.0f}{got['seconds']:>9.1f}"
              f"{grown / base[0]:>10.2f}{got['seconds'] / base[1]:>10.2f}")


if __name__ == "__main__":
    main()
