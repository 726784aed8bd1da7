"""Summarise a py-spy raw profile of the e2e service process (bench/pipeline.py --profile FILE).

    python bench/profile_summary.py FILE [--top N]

Each stack is put in the first category whose marker it contains, searched from the innermost
frame outwards, so "mongomock inside mark_processed" counts as MongoDB, and "Condition.wait in
the main thread" as waiting. Prints samples per category per thread kind, and the top leaf
frames of the busiest categories.
"""
from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict

# (category, markers): the first marker found from the innermost frame outwards wins.
CATEGORIES = [
    ("wait: GIL/lock/queue/socket", ("Condition.wait", "Lock.acquire", "_wait_for_tstate_lock",
                                     "select (selectors", "Event.wait", "SimpleQueue.get",
                                     "_worker (concurrent/futures/thread.py:81)",
                                     "take_gil", "sock_recv", "SocketIO.readinto",
                                     "poll (selectors", "time.sleep")),
    ("encode: JPEG/WebP save", ("_save_jpeg", "Image.save", "ImagingJpegEncode", "WebPEncode")),
    ("encode: decode", ("_decode (worker/encode.py",)),
    ("encode: prepare/convert", ("_prepare (worker/encode.py",)),
    ("encode: other", ("compress (worker/encode.py",)),
    ("MongoDB (mongomock)", ("mongomock",)),
    ("MongoDB (pymongo)", ("pymongo",)),
    ("S3 put (boto3/botocore)", ("put_bytes", "botocore", "boto3")),
    ("download (requests/urllib3)", ("download (worker/download.py", "urllib3", "requests")),
    ("RQ / redis", ("rq/", "redis/")),
    ("API (werkzeug/flask)", ("werkzeug", "flask")),
]


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in CATEGORIES:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def thread_kind(first: str) -> str:
    name = first.split(":", 1)[-1].strip()
    name = re.sub(r"\d+$", "", re.sub(r"_\d+$", "", name))
    return re.sub(r"^chunk\d*", "chunk pool", name)


def main(argv: list[str]) -> None:
    path = argv[0]
    top = int(argv[argv.index("--top") + 1]) if "--top" in argv else 12
    table: dict[str, Counter] = defaultdict(Counter)
    leaves: dict[str, Counter] = defaultdict(Counter)
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            kind = thread_kind(frames[0])
            cat = category(frames[1:])
            table[kind][cat] += n
            python = [f for f in frames[1:] if ".py:" in f]
            leaf = (python[-1] if python else frames[-1]).split(" (")[0]
            native = frames[-1].split(" (")[0] if not python or frames[-1] != python[-1] else ""
            leaves[cat][leaf + (f" > {native}" if native else "")] += n
            total += n
    cats = Counter()
    for counter in table.values():
        cats.update(counter)
    print(f"{total} samples; by category (all threads), then by thread kind")
    for cat, n in cats.most_common():
        per = ", ".join(f"{kind} {counter[cat]}" for kind, counter in table.items() if counter[cat])
        print(f"  {cat:<32}{n:>8} {n / total:>6.1%}   [{per}]")
    busy = [c for c, _ in cats.most_common() if not c.startswith("wait")][:6]
    for cat in busy:
        print(f"\n{cat}: top frames")
        for leaf, n in leaves[cat].most_common(top):
            print(f"  {n:>7}  {leaf}")


if __name__ == "__main__":
    main(sys.argv[1:])
