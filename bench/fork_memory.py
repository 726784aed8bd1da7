"""What a fresh work-horse pays before its images reuse memory, on 4 KiB and on huge pages.

A forking worker runs every chunk job in a new process (worker/__main__.py): its image memory
is new, so its first images fault their buffers in page by page. Each round here starts a
process the way `python -m worker` does (worker.image_memory: Pillow's block cache, glibc's
thresholds and one arena; and, for the huge-page rows, `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`,
which the service leaves to the deployment), which forks a child
like a work-horse; the child encodes the corpus twice with the service's encoder settings on
one thread per core. Per pass: CPU ms and page faults. The first pass's excess over the second
is what each chunk job pays for its fresh memory. The two settings alternate, round by round,
so that a machine whose speed drifts affects both alike; the table gives medians.

    python bench/fork_memory.py [--rounds 6]

Meaningful where the kernel's transparent huge pages are in `madvise` mode (the table's title
says which) and glibc is 2.35 or later: only there does the tunable change anything.

Prints a table and the ratio of each setting's excess to the 4 KiB pages' one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tables import aligned  # noqa: E402
TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SETTINGS = {"4 KiB pages": None, "huge pages": "glibc.malloc.hugetlb=1"}


def child() -> None:
    """One round: keep image memory as the worker does, fork, encode the corpus twice."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.pipeline import encoder_options, load_corpus
    from infra.settings import Settings
    from worker.chunks import encode_slots_count
    from worker.encode import compress
    from worker.image_memory import keep_image_memory

    settings = Settings()
    keep_image_memory(settings.max_pixels_in_flight)
    items, options = load_corpus(), encoder_options(settings)
    read, write = os.pipe()
    if os.fork() == 0:  # the work-horse
        def one(item) -> float:
            started = time.thread_time()
            compress(item.data, **options)
            return time.thread_time() - started
        passes = []
        with ThreadPoolExecutor(encode_slots_count()) as pool:
            for _ in range(2):
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                cpu = sum(pool.map(one, items))
                passes.append({"cpu_ms": cpu * 1000, "images": len(items),
                               "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                               - faults})
        os.write(write, json.dumps(passes).encode())
        os._exit(0)
    os.close(write)  # so that a child that died leaves the read below at its end, not waiting
    _, status = os.wait()
    if status != 0:
        raise SystemExit(f"the work-horse failed (wait status {status})")
    print(os.read(read, 100_000).decode())


def run(tunables: str | None) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True,
                         text=True, timeout=600, check=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    results: dict[str, list[list[dict]]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, tunables in SETTINGS.items():
            results[name].append(run(tunables))
    rows = [["setting", "1st pass ms/img", "2nd pass ms/img", "excess ms/horse",
             "1st pass faults", "2nd pass faults", "excess vs 4 KiB"]]
    base = None
    for name, rounds in results.items():
        images = rounds[0][0]["images"]
        first = statistics.median(r[0]["cpu_ms"] for r in rounds)
        second = statistics.median(r[1]["cpu_ms"] for r in rounds)
        excess = statistics.median(r[0]["cpu_ms"] - r[1]["cpu_ms"] for r in rounds)
        base = excess if base is None else base
        rows.append([name, f"{first / images:.1f}", f"{second / images:.1f}", f"{excess:.0f}",
                     f"{statistics.median(r[0]['faults'] for r in rounds):,.0f}",
                     f"{statistics.median(r[1]['faults'] for r in rounds):,.0f}",
                     f"{excess / base:.2f}" if base > 0 else "-"])
    try:
        mode = TRANSPARENT_HUGE_PAGES.read_text().strip()
    except OSError:
        mode = "unknown"
    print(f"a fresh work-horse encoding the corpus twice, medians of {args.rounds} rounds "
          f"(settings alternating; the kernel's transparent huge pages: {mode}; only `madvise` "
          "makes the two rows differ):")
    print(aligned(rows))


if __name__ == "__main__":
    main()
