"""What the stores cost per image, and whether it grows with the collection.

    python bench/store_ops.py [--sizes 10000,100000] [--sample 2000] [--mongomock] [--wire]

For each size, a fresh store gets one batch with that many pending images, written as the parse
writes them (blocks of 1,000). Then two samples of its chunks go through a chunk job's store
calls, each sample on one path:

- `old`: per image `start_attempt`, `mark_processed` and the batch's `add_image_results`;
  per chunk `pending_images` and `try_finish` (the chunk job as it was).
- `new`: per chunk `pending_images`, one `start_attempts` for its images, one
  `add_image_results` for their results (a run adds them at most once a second, and at its
  end: here a chunk's store calls take well under a second), then `try_finish` and the
  `recount_if_alone` check (the batch, `any_pending`); per image only `mark_processed`.

The table gives, per store, size and path, the store calls per image, the milliseconds per
image, their ratio to the smallest size's on the same path (O(1) in the collection is near 1;
the embedded-store target is at most 1.3), and `new/old`, the new path's time over the old's
in the same run. Stores: SQLite (the embedded default's); with `--mongomock` the MongoDB
implementation on mongomock, in process (its queries scan: small sizes); with `--wire` the same
through real pymongo over TCP to the test tree's MongoDB wire stand-in (tests/mongo_wire.py,
mongomock behind a socket), which also counts the MongoDB commands sent per image: the round
trips a real server would see.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.tables import aligned  # noqa: E402 - needs ROOT on sys.path

BLOCK = 1000


def processing_batch(implementation):
    """A new batch, started (its file not read yet)."""
    from schemas.records import BatchRecord, new_batch_id
    batch = BatchRecord.new(batch_id=new_batch_id(), owner=None, filename="bench.csv",
                            csv_key="uploads/bench.csv", csv_sha256="-", csv_bytes=0,
                            webhook_url=None)
    implementation.batches.create(batch)
    implementation.batches.start(batch.id)
    return batch


def fill(implementation, images: int, chunk_size: int):
    """One processing batch with `images` pending images in chunks of `chunk_size`."""
    from schemas.records import ImageRecord, image_id, url_hash

    batch = processing_batch(implementation)
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


class Counting:
    """A store's methods, each call counted (one call is one round trip on the paths here)."""

    def __init__(self, inner, calls: list):
        self._inner, self._calls = inner, calls

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self._calls.append(name)
            return attribute(*args, **kwargs)
        return counted


def _chunks(images: int, sample: int, chunk_size: int, path: int) -> range:
    """`sample` images' worth of chunks spread over the batch; path 0 and 1 take different
    ones, so neither finds the other's images done."""
    chunks = max(2, images // chunk_size)
    wanted = max(1, sample // chunk_size)
    step = max(2, chunks // wanted)
    return range(path, chunks, step)[:wanted]


def old_path(products, batches, batch_id: str, chunk: int) -> int:
    done = 0
    for image in products.pending_images(batch_id, chunk):
        attempt = products.start_attempt(image)
        slots = products.mark_processed(attempt, key=f"outputs/{image.hash}.jpg",
                                        output_url="http://x/y.jpg", bytes_in=1000,
                                        bytes_out=500, content_type="image/jpeg")
        batches.add_image_results(batch_id, processed=slots, bytes_in=1000, bytes_out=500)
        done += 1
    batches.try_finish(batch_id)
    return done


def new_path(products, batches, batch_id: str, chunk: int) -> int:
    images = products.pending_images(batch_id, chunk)
    claimed = products.start_attempts([im.id for im in images])
    slots = 0
    for image in images:
        assert image.id in claimed
        slots += products.mark_processed(image, key=f"outputs/{image.hash}.jpg",
                                         output_url="http://x/y.jpg", bytes_in=1000,
                                         bytes_out=500, content_type="image/jpeg")
    batches.add_image_results(batch_id, processed=slots, bytes_in=1000 * len(images),
                              bytes_out=500 * len(images))
    if batches.try_finish(batch_id) is None:  # as tasks.process_chunk, sweeper.recount_if_alone
        batch = batches.get(batch_id, any_owner=True)
        if batch.parsed and batch.done_slots < batch.images_total:
            products.any_pending(batch_id)
    return len(images)


PATHS = {"old": old_path, "new": new_path}


def per_image(implementation, batch_id: str, images: int, sample: int, chunk_size: int,
              commands: list) -> dict[str, dict]:
    """ms, store calls and (on the wire) MongoDB commands per image of each path, their chunks
    taken in turn (old, new, old, …) so that the store's own background work (SQLite's
    checkpoints) and the machine's other load fall on both alike."""
    counting = commands is not None
    commands = commands if counting else []
    figures = {}
    for path in PATHS:
        calls: list[str] = []
        figures[path] = {"calls": calls, "products": Counting(implementation.products, calls),
                         "batches": Counting(implementation.batches, calls), "done": 0,
                         "seconds": 0.0, "commands": 0,
                         "chunks": list(_chunks(images, sample, chunk_size,
                                                list(PATHS).index(path)))}
    for turn in range(max(len(f["chunks"]) for f in figures.values())):
        for path, f in figures.items():
            if turn >= len(f["chunks"]):
                continue
            sent = len(commands)
            started = time.perf_counter()
            f["done"] += PATHS[path](f["products"], f["batches"], batch_id, f["chunks"][turn])
            f["seconds"] += time.perf_counter() - started
            f["commands"] += len(commands) - sent
    results = {}
    for path, f in figures.items():
        done = max(1, f["done"])
        results[path] = {"ms_per_image": 1000 * f["seconds"] / done,
                         "calls_per_image": len(f["calls"]) / done,
                         "commands_per_image": f["commands"] / done if counting else None}
    return results


def _command_counter(commands: list):
    """A pymongo command listener that notes every command the client sends."""
    from pymongo import monitoring

    class CommandCounter(monitoring.CommandListener):
        def started(self, event):
            commands.append(event.command_name)

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass
    return CommandCounter()


def measure(kind: str, images: int, sample: int, chunk_size: int, workdir: Path,
            wire=None) -> list[dict]:
    from infra import db, stores
    commands: list[str] = []
    if kind == "sqlite":
        from infra.stores.sqlite import SqliteStores
        implementation = SqliteStores(str(workdir / f"store-{images}.sqlite3"))
    else:
        from infra.stores.mongo import MongoStores
        if kind == "mongomock":
            import mongomock
            db.use_client(mongomock.MongoClient())
        else:
            import pymongo
            client = pymongo.MongoClient(wire.uri, event_listeners=[_command_counter(commands)])
            db.use_client(client)
        implementation = MongoStores()
    implementation.prepare()
    stores.use(implementation)
    started = time.perf_counter()
    batch_id = fill(implementation, images, chunk_size)
    implementation.batches.finish_reading(batch_id, header=["S. No.", "Product Name",
                                                            "Input Image Urls"])
    write_s = time.perf_counter() - started
    figures = per_image(implementation, batch_id, images, sample, chunk_size,
                        commands if kind == "wire" else None)
    results = [{"store": kind, "images": images, "write_s": write_s, "path": path, **values}
               for path, values in figures.items()]
    stores.use(None)
    if kind != "sqlite":
        db.get_db().client.drop_database(db.get_db().name)
        db.use_client(None)
    return results


def table(results: list[dict]) -> str:
    head = ["store", "images", "write s", "path", "calls/image", "commands/image", "ms/image",
            "ratio", "new/old"]
    lines = [head]
    base: dict[tuple, float] = {}
    old: dict[tuple, float] = {}
    for r in results:
        first = base.setdefault((r["store"], r["path"]), r["ms_per_image"])
        key = (r["store"], r["images"])
        if r["path"] == "old":
            old[key] = r["ms_per_image"]
        lines.append([r["store"], f"{r['images']:,}", f"{r['write_s']:.1f}", r["path"],
                      f"{r['calls_per_image']:.2f}",
                      "-" if r["commands_per_image"] is None else f"{r['commands_per_image']:.2f}",
                      f"{r['ms_per_image']:.3f}", f"{r['ms_per_image'] / first:.2f}",
                      f"{r['ms_per_image'] / old[key]:.2f}" if r["path"] == "new" else ""])
    return aligned(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="images, comma-separated")
    parser.add_argument("--sample", type=int, default=2000, help="images timed per size and path")
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--mongomock", action="store_true",
                        help="also the MongoDB implementation on mongomock (use small sizes)")
    parser.add_argument("--wire", action="store_true",
                        help="also over pymongo to the MongoDB wire stand-in (use small sizes)")
    parser.add_argument("--stores", default="", help="instead: sqlite,mongomock,wire")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = (args.stores.split(",") if args.stores else
             ["sqlite"] + (["mongomock"] if args.mongomock else []) + (["wire"] if args.wire else []))
    wire = None
    if "wire" in kinds:
        from infra.settings import use_settings
        from tests.mongo_wire import MongoWire
        wire = MongoWire()
        wire.start()
        os.environ.setdefault("MONGO_DB", "bench_store_ops")
        use_settings(None)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as workdir:
            for kind in kinds:
                for size in sizes:
                    for r in measure(kind, size, args.sample, args.chunk_size, Path(workdir), wire):
                        results.append(r)
                        print(f"  {kind} {size:,} images, {r['path']}: "
                              f"{r['ms_per_image']:.3f} ms/image", file=sys.stderr, flush=True)
    finally:
        if wire is not None:
            wire.stop()
    print(table(results))


if __name__ == "__main__":
    main()
