"""What the stores cost per image, and whether it grows with the collection.

    python bench/store_ops.py [--sizes 10000,100000] [--sample 2000] [--mongomock]

For each size, a fresh SQLite file (the embedded default's store) gets one batch with that many
images, written as the parse writes them (blocks of 1,000). Then a sample of its images goes
through what a chunk job does per image: `pending_images` of its chunk, `start_attempt`,
`mark_processed`, and the batch's `add_image_results`. The table gives the milliseconds per
image at each size and their ratio to the smallest size: O(1) in the collection is a ratio near
1 (the embedded-store target is at most 1.3). `--mongomock` adds the MongoDB implementation on
mongomock, the in-process stand-in of the tests, to show the scans it makes (slow; small sizes).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = 1000


def fill(implementation, images: int, chunk_size: int):
    """One processing batch with `images` pending images in chunks of `chunk_size`."""
    from schemas.records import BatchRecord, ImageRecord, image_id, new_batch_id, url_hash

    batch = BatchRecord.new(batch_id=new_batch_id(), owner=None, filename="bench.csv",
                            csv_key="uploads/bench.csv", csv_sha256="-", csv_bytes=0,
                            webhook_url=None)
    implementation.batches.create(batch)
    implementation.batches.start(batch.id)
    for flush, start in enumerate(range(0, images, BLOCK), start=1):
        block = []
        for n in range(start, min(images, start + BLOCK)):
            url = f"http://127.0.0.1:9/p{n}.jpg"
            digest = url_hash(url)
            block.append(ImageRecord(id=image_id(batch.id, digest), batch_id=batch.id, url=url,
                                     hash=digest, occurrences=1, chunk=n // chunk_size))
        implementation.products.add_images(batch.id, flush, block)
        implementation.batches.record_flush(batch.id, flush, rows_total=len(block),
                                            rows_valid=len(block), rows_invalid=0,
                                            images_total=len(block),
                                            chunks=(len(block) + chunk_size - 1) // chunk_size)
    return batch.id


def per_image_ms(implementation, batch_id: str, images: int, sample: int,
                 chunk_size: int) -> float:
    """Milliseconds per image of a chunk job's store calls, over `sample` images spread
    evenly over the batch's chunks."""
    chunks = max(1, images // chunk_size)
    wanted = max(1, sample // chunk_size)
    step = max(1, chunks // wanted)
    done = 0
    started = time.perf_counter()
    for chunk in range(0, chunks, step)[:wanted]:
        for image in implementation.products.pending_images(batch_id, chunk):
            attempt = implementation.products.start_attempt(image)
            slots = implementation.products.mark_processed(
                attempt, key=f"outputs/{image.hash}.jpg", output_url="http://x/y.jpg",
                bytes_in=1000, bytes_out=500, content_type="image/jpeg")
            implementation.batches.add_image_results(batch_id, processed=slots)
            done += 1
    return 1000 * (time.perf_counter() - started) / max(1, done)


def measure(kind: str, images: int, sample: int, chunk_size: int, workdir: Path) -> dict:
    from infra import stores
    if kind == "sqlite":
        from infra.stores.sqlite import SqliteStores
        implementation = SqliteStores(str(workdir / f"store-{images}.sqlite3"))
    else:
        import mongomock

        from infra import db
        from infra.stores.mongo import MongoStores
        db.use_client(mongomock.MongoClient())
        implementation = MongoStores()
    implementation.prepare()
    stores.use(implementation)
    started = time.perf_counter()
    batch_id = fill(implementation, images, chunk_size)
    write_s = time.perf_counter() - started
    ms = per_image_ms(implementation, batch_id, images, sample, chunk_size)
    stores.use(None)
    return {"store": kind, "images": images, "write_s": write_s, "ms_per_image": ms}


def table(results: list[dict]) -> str:
    lines = [f"{'store':<10}{'images':>10}{'write s':>10}{'ms/image':>10}{'ratio':>8}",
             "-" * 48]
    base: dict[str, float] = {}
    for r in results:
        first = base.setdefault(r["store"], r["ms_per_image"])
        lines.append(f"{r['store']:<10}{r['images']:>10,}{r['write_s']:>10.1f}"
                     f"{r['ms_per_image']:>10.3f}{r['ms_per_image'] / first:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="images, comma-separated")
    parser.add_argument("--sample", type=int, default=2000, help="images timed per size")
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--mongomock", action="store_true",
                        help="also the MongoDB implementation on mongomock (use small sizes)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = ["sqlite"] + (["mongomock"] if args.mongomock else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as workdir:
        for kind in kinds:
            for size in sizes:
                results.append(measure(kind, size, args.sample, args.chunk_size, Path(workdir)))
                print(f"  {kind} {size:,} images: {results[-1]['ms_per_image']:.3f} ms/image",
                      file=sys.stderr, flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
