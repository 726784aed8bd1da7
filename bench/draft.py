"""Decoding JPEGs in draft mode when no full-size output is asked for (`full_size=false`).

Measures, on one core, over the corpus's JPEGs, in the same run:

(a) decode only: a full decode (what every image costs with a full-size output) against the
    draft decode worker.encode makes for the largest size (DCT scaling in libjpeg), per largest
    size asked for;
(b) the whole compress() of each image with sizes: with a full-size output (the baseline)
    against `full_size=False` (draft decode, no full-size encode).

Prints ms/image (the fastest of alternate rounds) and the ratio draft / full for each. Options: --seconds S (each measurement
runs at least S seconds, default 2), --sizes "thumb=200,large=800;thumb=200,large=1600" (the
size sets compared, `;` between sets). The corpus is BENCH_CORPUS, or ../shared/corpus.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from schemas.sizes import parse_sizes  # noqa: E402
from worker.encode import _decode, compress  # noqa: E402


def corpus_jpegs() -> list[tuple[str, bytes]]:
    folder = Path(os.environ.get("BENCH_CORPUS") or ROOT.parent / "shared" / "corpus")
    found = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.suffix.lower() in (".jpg", ".jpeg") and data[:2] == b"\xff\xd8":
            found.append((path.name, data))
    if not found:
        raise SystemExit(f"no JPEG in {folder} (set BENCH_CORPUS)")
    return found


def ms_per_image(images: list[bytes], baseline, candidate, seconds: float) -> tuple[float, float]:
    """ms/image of `baseline(data)` and `candidate(data)` over the images: alternate rounds for
    at least `seconds` in all, each figure its fastest round (the machine is shared: slower
    rounds are other processes' time, not ours)."""
    best = [float("inf"), float("inf")]
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or best[1] == float("inf"):
        for n, run in enumerate((baseline, candidate)):
            began = time.perf_counter()
            for data in images:
                run(data)
            best[n] = min(best[n], time.perf_counter() - began)
    return 1000 * best[0] / len(images), 1000 * best[1] / len(images)


def full_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as im:
        im.load()


def draft_decode(edge: int):
    def run(data: bytes) -> None:
        im, _, _ = _decode(data, 50_000_000, draft_edge=edge)
        im.close()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--sizes", default="thumb=200,large=800;thumb=200,large=1200")
    args = parser.parse_args()
    jpegs = corpus_jpegs()
    groups = {"all JPEGs": [data for _, data in jpegs]}
    largest = max(_edge(data) for _, data in jpegs)
    groups[f"{largest}-px JPEGs"] = [data for _, data in jpegs if _edge(data) == largest]
    print(f"{len(jpegs)} corpus JPEGs; one core; each pair of figures: the fastest of "
          f"alternate rounds over at least {args.seconds:g} s")
    head = (f"{'images':<15} {'sizes':<22} {'decode full':>12} {'draft':>9} {'ratio':>6}   "
            f"{'compress full_size':>19} {'=false':>9} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for group, images in groups.items():
        for text in args.sizes.split(";"):
            sizes = parse_sizes(text)
            full, drafted = ms_per_image(images, full_decode, draft_decode(max(sizes.values())),
                                         args.seconds)
            with_full, without = ms_per_image(
                images, lambda d: compress(d, sizes=sizes),
                lambda d: compress(d, sizes=sizes, full_size=False), args.seconds)
            print(f"{group:<15} {text:<22} {full:>9.1f} ms {drafted:>6.1f} ms "
                  f"{drafted / full:>6.2f}   {with_full:>16.1f} ms {without:>6.1f} ms "
                  f"{without / with_full:>6.2f}", flush=True)


def _edge(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        return max(im.size)


if __name__ == "__main__":
    main()
