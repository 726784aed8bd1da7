"""How fast a batch's rows are read back: output.csv, errors.csv and the last products page.

    python bench/exports.py [--sizes 10000,100000] [--mongomock] [--profile FILE]

For each size, a fresh store (a SQLite file, and with --mongomock the MongoDB implementation on
mongomock) gets one finished batch of that many rows, one processed image each, written as the
parse and the chunk jobs write them. The Flask app (no other service needed) then serves, through
its WSGI test client in this process, `output.csv` and `errors.csv` whole (time to first byte,
MB/s) and the products page at the start and at the end (latency, following the last cursor).
The baseline is `iter_rows`, the store's read of the same rows with no CSV made, timed in the
same run: `csv/read` is how much slower the export is than reading its rows. Each figure's ratio
to the smallest size's is printed too (≈1: flat; ≈ the size ratio: linear).
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
PAGE = 500


def fill(implementation, rows: int) -> str:
    """A completed batch of `rows` accepted rows, one processed image each."""
    from schemas.batch import BatchStatus
    from bench.store_ops import processing_batch
    from schemas.records import (ACCEPTED, PROCESSED, ImageRecord, ProductRecord, image_id,
                                 product_id, url_hash)

    batch = processing_batch(implementation)
    for flush, start in enumerate(range(0, rows, BLOCK), start=1):
        products, images = [], []
        for n in range(start + 1, min(rows, start + BLOCK) + 1):
            url = f"https://img.example.com/catalogue/{n}/photo.jpg"
            digest = url_hash(url)
            products.append(ProductRecord(
                id=product_id(batch.id, n + 1), batch_id=batch.id, line=n + 1,
                cells=[str(n), f"Product {n}", url], serial_raw=str(n), url_slots=1,
                status=ACCEPTED, serial_no=n, product_name=f"Product {n}",
                input_image_urls=[url], image_hashes=[digest]))
            images.append(ImageRecord(
                id=image_id(batch.id, digest), batch_id=batch.id, url=url, hash=digest,
                occurrences=1, chunk=n // 50, status=PROCESSED,
                output_key=f"outputs/{batch.id}/{digest}/photo.jpg",
                output_url=f"https://cdn.example.com/outputs/{batch.id}/{digest}/photo.jpg",
                bytes_in=20000, bytes_out=9000, content_type="image/jpeg", width=800,
                height=600, format="JPEG", output_format="JPEG", last_flush=flush))
        implementation.products.write_rows(products)
        insert_images(implementation, images)
        implementation.batches.record_flush(batch.id, flush, rows_total=len(products),
                                            rows_valid=len(products), rows_invalid=0,
                                            images_total=len(images), chunks=0)
        implementation.batches.add_image_results(batch.id, processed=len(images))
    implementation.batches.finish_reading(batch.id, header=["S. No.", "Product Name",
                                                            "Input Image Urls"])
    finished = implementation.batches.try_finish(batch.id)
    assert finished is not None and finished.status == BatchStatus.COMPLETED, finished
    return batch.id


def insert_images(implementation, images) -> None:
    """Processed images as the chunk jobs leave them, inserted in bulk (mongomock's conditional
    updates scan the collection: marking 100k images one by one would take hours)."""
    if implementation.name == "sqlite":
        from infra.stores.sqlite import IMAGES
        with implementation.database.transaction() as conn:
            conn.executemany(IMAGES.insert, [IMAGES.encode(image) for image in images])
    else:
        from infra import db
        from infra.stores.mongo import to_doc
        db.images().insert_many([to_doc(image) for image in images])


def download(client, url: str) -> tuple[float, float, int]:
    """(seconds to the first byte, seconds in all, bytes) of a streamed GET."""
    started = time.perf_counter()
    response = client.get(url, buffered=False)
    assert response.status_code == 200, response.status_code
    first = None
    size = 0
    for part in response.response:
        if first is None:
            first = time.perf_counter() - started
        size += len(part)
    response.close()
    return first or 0.0, time.perf_counter() - started, size


def pages(client, url: str) -> tuple[float, float]:
    """Latency (ms) of the first products page and of the last one, reached by its cursor."""
    started = time.perf_counter()
    answer = client.get(url, query_string={"limit": PAGE}).get_json()
    first_ms = 1000 * (time.perf_counter() - started)
    last_cursor = None
    while answer["next_cursor"]:  # walk the cursors (not timed) to the last one
        last_cursor = answer["next_cursor"]
        answer = client.get(url, query_string={"limit": PAGE, "cursor": last_cursor}).get_json()
    started = time.perf_counter()
    client.get(url, query_string={"limit": PAGE, "cursor": last_cursor})
    return first_ms, 1000 * (time.perf_counter() - started)


def measure(kind: str, rows: int, workdir: Path) -> dict:
    from api import create_app
    from infra import db, stores
    from infra.settings import get_settings, use_settings
    if kind == "sqlite":
        from infra.stores.sqlite import SqliteStores
        implementation = SqliteStores(str(workdir / f"exports-{rows}.sqlite3"))
    else:
        import mongomock

        from infra.stores.mongo import MongoStores
        db.use_client(mongomock.MongoClient(tz_aware=True))
        implementation = MongoStores()
    implementation.prepare()
    stores.use(implementation)
    use_settings(None)
    batch_id = fill(implementation, rows)
    client = create_app(get_settings(), prepare_stores=False).test_client()
    base = f"/api/v1/batches/{batch_id}"

    started = time.perf_counter()
    read = sum(1 for _ in implementation.products.iter_rows(batch_id))
    read_s = time.perf_counter() - started
    assert read == rows
    result = {"store": kind, "rows": rows, "read_s": read_s}
    ttfb, seconds, size = download(client, base + "/output.csv")
    result.update(csv_ttfb_ms=1000 * ttfb, csv_s=seconds, csv_mb=size / 1e6,
                  csv_mb_s=size / 1e6 / seconds)
    ttfb, seconds, size = download(client, base + "/errors.csv")
    result.update(errors_ttfb_ms=1000 * ttfb, errors_s=seconds)
    result["page_first_ms"], result["page_last_ms"] = pages(client, base + "/products")
    stores.use(None)
    db.use_client(None)
    return result


COLUMNS = [("read_s", "read s", "{:.2f}"), ("csv_mb", "CSV MB", "{:.1f}"),
           ("csv_ttfb_ms", "csv TTFB ms", "{:.1f}"), ("csv_s", "csv s", "{:.2f}"),
           ("csv_mb_s", "csv MB/s", "{:.1f}"), ("csv_read", "csv/read", "{:.2f}"),
           ("errors_ttfb_ms", "errors TTFB ms", "{:.1f}"), ("errors_s", "errors s", "{:.2f}"),
           ("page_first_ms", "page 1 ms", "{:.1f}"), ("page_last_ms", "last page ms", "{:.1f}")]


def table(results: list[dict]) -> str:
    for r in results:
        r["csv_read"] = r["csv_s"] / r["read_s"]
    head = ["store", "rows"] + [label for _, label, _ in COLUMNS]
    lines = [head]
    base: dict[str, dict] = {}
    for r in results:
        lines.append([r["store"], f"{r['rows']:,}"] +
                     [fmt.format(r[key]) for key, _, fmt in COLUMNS])
        first = base.setdefault(r["store"], r)
        if first is not r:
            lines.append(["", f"x{r['rows'] / first['rows']:.0f} ratio"] +
                         [f"{r[key] / first[key]:.2f}" if first[key] else "-"
                          for key, _, _ in COLUMNS])
    return aligned(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="rows, comma-separated")
    parser.add_argument("--mongomock", action="store_true",
                        help="also the MongoDB implementation on mongomock")
    args = parser.parse_args()
    # The app wants its services named; nothing here reaches them.
    for name, value in {"REDIS_URL": "redis://127.0.0.1:9/0", "MONGO_URL": "mongodb://unused.invalid",
                        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
                        "S3_BUCKET": "bench", "AWS_ACCESS_KEY_ID": "x",
                        "AWS_SECRET_ACCESS_KEY": "x", "LOG_LEVEL": "WARNING"}.items():
        os.environ.setdefault(name, value)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = ["sqlite"] + (["mongomock"] if args.mongomock else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-exports-") as workdir:
        for kind in kinds:
            for rows in sizes:
                results.append(measure(kind, rows, Path(workdir)))
                print(results[-1], file=sys.stderr, flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
