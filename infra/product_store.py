"""Product rows and their images in MongoDB: bulk writes, state changes, pages and joins."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from pymongo import ReplaceOne, UpdateOne

from infra import db

PENDING, PROCESSED, FAILED = "pending", "processed", "failed"
ACCEPTED, REJECTED = "accepted", "rejected"


def url_hash(url: str) -> str:
    """The stable id of an input URL within a batch (also names its output object)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def product_id(batch_id: str, line: int) -> str:
    return f"{batch_id}:{line:09d}"


def image_id(batch_id: str, digest: str) -> str:
    return f"{batch_id}:{digest}"


def write_rows(docs: list[dict]) -> None:
    """Upsert row documents by their id (a re-run parse writes the same documents)."""
    if docs:
        db.products().bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs],
                                 ordered=False)


def write_images(batch_id: str, images: Iterable[dict]) -> None:
    """Create image documents, keeping the state of any that a previous run already finished."""
    ops = [UpdateOne(
        {"_id": image_id(batch_id, im["hash"])},
        {"$set": {"batch_id": batch_id, "url": im["url"], "hash": im["hash"],
                  "occurrences": im["occurrences"], "chunk": im["chunk"]},
         "$setOnInsert": {"status": PENDING, "output_url": None, "output_key": None,
                          "error": None, "bytes_in": None, "bytes_out": None}},
        upsert=True) for im in images]
    for start in range(0, len(ops), 1000):
        db.images().bulk_write(ops[start:start + 1000], ordered=False)


def pending_images(batch_id: str, chunk: int) -> list[dict]:
    return list(db.images().find({"batch_id": batch_id, "chunk": chunk, "status": PENDING}))


def pending_chunks(batch_id: str) -> list[int]:
    return sorted(db.images().distinct("chunk", {"batch_id": batch_id, "status": PENDING}))


def mark_processed(doc: dict, *, key: str, output_url: str, bytes_in: int, bytes_out: int,
                   content_type: str, kept_original: bool = False) -> bool:
    """pending -> processed; True only for the one call that made the change."""
    result = db.images().update_one(
        {"_id": doc["_id"], "status": PENDING},
        {"$set": {"status": PROCESSED, "output_key": key, "output_url": output_url,
                  "bytes_in": bytes_in, "bytes_out": bytes_out, "content_type": content_type,
                  "kept_original": kept_original, "error": None}})
    return result.modified_count == 1


def mark_failed(doc: dict, error: str, bytes_in: int | None = None) -> bool:
    """pending -> failed; True only for the one call that made the change."""
    result = db.images().update_one(
        {"_id": doc["_id"], "status": PENDING},
        {"$set": {"status": FAILED, "error": error, "bytes_in": bytes_in}})
    return result.modified_count == 1


def start_attempt(doc: dict) -> dict | None:
    """Count one more attempt at a pending image as a worker starts on it; returns the image
    after the change, or None when it is no longer pending (done by another run).

    An `update_one` by `_id`, not `find_one_and_update`: the attempt count after the change is
    the one in `doc` (as read by `pending_images`) plus one, so nothing needs to be read back.
    (mongomock serves `find_one_and_update` by scanning every document of the collection.)"""
    result = db.images().update_one({"_id": doc["_id"], "status": PENDING},
                                     {"$inc": {"attempts": 1}})
    if result.modified_count != 1:
        return None
    return {**doc, "attempts": (doc.get("attempts") or 0) + 1}


def fail_pending(batch_id: str, error: str) -> int:
    """pending -> failed for every pending image of a batch (the sweeper giving up)."""
    result = db.images().update_many({"batch_id": batch_id, "status": PENDING},
                                     {"$set": {"status": FAILED, "error": error}})
    return result.modified_count


def images_for(batch_id: str, hashes: Iterable[str]) -> dict[str, dict]:
    ids = [image_id(batch_id, h) for h in set(hashes)]
    return {d["hash"]: d for d in db.images().find({"_id": {"$in": ids}})} if ids else {}


def iter_rows(batch_id: str, *, status: str | None = None, after_line: int = 0,
              block: int = 500) -> Iterator[tuple[dict, dict[str, dict]]]:
    """Every row in line order with the image documents it refers to, read block by block."""
    while True:
        query = {"batch_id": batch_id, "line": {"$gt": after_line}}
        if status:
            query["status"] = status
        rows = list(db.products().find(query).sort("line", 1).limit(block))
        if not rows:
            return
        images = images_for(batch_id, (h for r in rows for h in r.get("image_hashes", [])))
        for row in rows:
            yield row, images
        after_line = rows[-1]["line"]
        if len(rows) < block:
            return


def page_products(batch_id: str, *, after_line: int, limit: int,
                  status: str | None = None) -> tuple[list[tuple[dict, dict]], int | None]:
    """A page of accepted products; returns ([(row, images)], last line if more follow)."""
    query = {"batch_id": batch_id, "status": ACCEPTED, "line": {"$gt": after_line}}
    rows = list(db.products().find(query).sort("line", 1).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    images = images_for(batch_id, (h for r in rows for h in r.get("image_hashes", [])))
    return [(r, images) for r in rows], (rows[-1]["line"] if more and rows else None)


# --- control: retry and stall sweeping (issue 5) ---------------------------------------------

def failed_images(batch_id: str) -> list[dict]:
    """The failed image documents of a batch (id, occurrences, chunk only)."""
    return list(db.images().find({"batch_id": batch_id, "status": FAILED},
                                 {"occurrences": 1, "chunk": 1}))


def reset_images(ids: list[str]) -> int:
    """failed -> pending for exactly these image documents; returns how many changed."""
    if not ids:
        return 0
    result = db.images().update_many({"_id": {"$in": ids}, "status": FAILED},
                                     {"$set": {"status": PENDING, "error": None, "attempts": 0}})
    return result.modified_count


def count_slots(batch_id: str) -> dict[str, int]:
    """Image slots (occurrences) per image status, re-derived from the image documents."""
    counts: dict[str, int] = {}
    for doc in db.images().find({"batch_id": batch_id}, {"status": 1, "occurrences": 1}):
        counts[doc["status"]] = counts.get(doc["status"], 0) + doc["occurrences"]
    return counts
