"""Batch records in MongoDB: create, read, page through, count atomically, finish exactly once."""
from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime, timezone

from pymongo import ReturnDocument

from infra import db
from schemas.batch import BatchStatus, final_status
from schemas.timestamps import now

ACTIVE = [BatchStatus.QUEUED.value, BatchStatus.PROCESSING.value]


def new_id() -> str:
    return "bat_" + secrets.token_hex(12)


def create(*, batch_id: str, owner: str | None, filename: str | None, csv_key: str,
           csv_sha256: str, csv_bytes: int, webhook_url: str | None) -> dict:
    stamp = now()
    doc = {
        "_id": batch_id, "owner": owner, "status": BatchStatus.QUEUED.value,
        "filename": filename, "csv_key": csv_key, "csv_sha256": csv_sha256,
        "csv_bytes": csv_bytes, "webhook_url": webhook_url,
        "created_at": stamp, "updated_at": stamp, "started_at": None, "finished_at": None,
        "rows_total": 0, "rows_valid": 0, "rows_invalid": 0,
        "images_total": 0, "images_processed": 0, "images_failed": 0,
        "parsed": False, "chunks": 0, "error": None, "finish_seq": 0,
    }
    db.batches().insert_one(doc)
    return doc


def get(batch_id: str, owner: str | None = None, *, any_owner: bool = False) -> dict | None:
    query = {"_id": batch_id}
    if not any_owner:
        query["owner"] = owner
    return db.batches().find_one(query)


def delete(batch_id: str) -> None:
    db.batches().delete_one({"_id": batch_id})


def start(batch_id: str) -> dict | None:
    """queued -> processing (no-op when already processing); None when it must not run."""
    stamp = now()
    db.batches().update_one(
        {"_id": batch_id, "status": BatchStatus.QUEUED.value},
        {"$set": {"status": BatchStatus.PROCESSING.value, "started_at": stamp, "updated_at": stamp}},
    )
    return db.batches().find_one({"_id": batch_id, "status": BatchStatus.PROCESSING.value})


def record_parse(batch_id: str, *, header: list[str], rows_total: int, rows_valid: int, rows_invalid: int,
                 images_total: int, chunks: int) -> None:
    """Store the counts found by parsing (set, not added: a re-run parse writes the same)."""
    db.batches().update_one({"_id": batch_id}, {"$set": {
        "header": header, "rows_total": rows_total, "rows_valid": rows_valid, "rows_invalid": rows_invalid,
        "images_total": images_total, "chunks": chunks, "parsed": True, "updated_at": now(),
    }})


def add_image_results(batch_id: str, processed: int = 0, failed: int = 0) -> None:
    """Atomically add finished image slots (and mark progress for the stall sweeper)."""
    db.batches().update_one(
        {"_id": batch_id},
        {"$inc": {"images_processed": processed, "images_failed": failed},
         "$set": {"updated_at": now()}})


def try_finish(batch_id: str) -> dict | None:
    """Finish the batch when every image is done; returns it only to the one caller that did."""
    batch = db.batches().find_one({"_id": batch_id})
    if (batch is None or batch["status"] != BatchStatus.PROCESSING.value or not batch["parsed"]
            or batch["images_processed"] + batch["images_failed"] < batch["images_total"]):
        return None
    status = final_status(batch["rows_invalid"], batch["images_total"],
                          batch["images_failed"], batch["rows_valid"])
    error = batch.get("error")
    if status == BatchStatus.FAILED and not error:
        error = ("no valid rows in the file" if batch["rows_valid"] == 0
                 else "every image failed; see errors.csv")
    stamp = now()
    return db.batches().find_one_and_update(
        {"_id": batch_id, "status": BatchStatus.PROCESSING.value},
        {"$set": {"status": status.value, "finished_at": stamp, "updated_at": stamp,
                  "error": error},
         "$inc": {"finish_seq": 1}},
        return_document=ReturnDocument.AFTER,
    )


def fail(batch_id: str, error: str, *, unparsed_only: bool = False) -> dict | None:
    """End a batch whose file itself broke; only from queued or processing (and, with
    `unparsed_only`, only while its file has not been read)."""
    stamp = now()
    query: dict = {"_id": batch_id, "status": {"$in": ACTIVE}}
    if unparsed_only:
        query["parsed"] = False
    return db.batches().find_one_and_update(
        query,
        {"$set": {"status": BatchStatus.FAILED.value, "error": error, "finished_at": stamp,
                  "updated_at": stamp}, "$inc": {"finish_seq": 1}},
        return_document=ReturnDocument.AFTER,
    )


def status_of(batch_id: str) -> str | None:
    doc = db.batches().find_one({"_id": batch_id}, {"status": 1})
    return doc["status"] if doc else None


# --- paging -----------------------------------------------------------------------------------

def encode_cursor(values: dict) -> str:
    raw = json.dumps(values, default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict:
    """Raises ValueError on a cursor this service did not make."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except Exception:  # noqa: BLE001 - any garbage is the same user error
        raise ValueError("cursor is not one this API returned") from None
    if not isinstance(value, dict):
        raise ValueError("cursor is not one this API returned")
    return value


def list_page(owner: str | None, *, limit: int, cursor: str | None, status: str | None,
              created_after: datetime | None, created_before: datetime | None):
    """Newest first; returns (docs, next_cursor)."""
    query: dict = {"owner": owner}
    if status:
        query["status"] = status
    created: dict = {}
    if created_after:
        created["$gt"] = created_after
    if created_before:
        created["$lt"] = created_before
    if created:
        query["created_at"] = created
    if cursor:
        position = decode_cursor(cursor)
        try:
            at = datetime.fromisoformat(position["t"])
            last_id = str(position["i"])
        except (KeyError, ValueError, TypeError):
            raise ValueError("cursor is not one this API returned") from None
        query["$or"] = [{"created_at": {"$lt": at}}, {"created_at": at, "_id": {"$lt": last_id}}]
        if created:
            query = {"$and": [{k: v for k, v in query.items() if k != "$or"},
                              {"$or": query["$or"]}]}
    docs = list(db.batches().find(query).sort([("created_at", -1), ("_id", -1)]).limit(limit + 1))
    next_cursor = None
    if len(docs) > limit:
        docs = docs[:limit]
        last = docs[-1]
        next_cursor = encode_cursor({"t": _aware(last["created_at"]).isoformat(), "i": last["_id"]})
    return docs, next_cursor


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# --- control: cancel, retry, stall sweeping ---------------------------------------------------

RETRYABLE = [BatchStatus.COMPLETED_WITH_ERRORS.value, BatchStatus.FAILED.value]


def cancel(batch_id: str) -> dict | None:
    """queued/processing -> cancelled, exactly once; returns the batch only to the caller that did."""
    stamp = now()
    return db.batches().find_one_and_update(
        {"_id": batch_id, "status": {"$in": ACTIVE}},
        {"$set": {"status": BatchStatus.CANCELLED.value, "finished_at": stamp,
                  "updated_at": stamp, "cancelled_at": stamp},
         "$inc": {"finish_seq": 1}},
        return_document=ReturnDocument.AFTER,
    )


def start_retry(batch: dict, failed_slots: int) -> dict | None:
    """A finished batch back to processing, its failed count lowered by the slots to retry.

    One atomic update, conditional on the status and finish_seq read by the caller, so of two
    concurrent retries only one wins (the other gets None). The `retries` counter makes the
    progress-event ids of the new run sort after the old run's.
    """
    stamp = now()
    return db.batches().find_one_and_update(
        {"_id": batch["_id"], "status": {"$in": RETRYABLE}, "finish_seq": batch.get("finish_seq", 0),
         "images_failed": {"$gte": failed_slots}},
        {"$set": {"status": BatchStatus.PROCESSING.value, "finished_at": None, "error": None,
                  "updated_at": stamp, "retried_at": stamp},
         "$inc": {"images_failed": -failed_slots, "retries": 1}},
        return_document=ReturnDocument.AFTER,
    )


def stalled(before: datetime, limit: int = 1000) -> list[dict]:
    """Active batches whose last recorded progress (updated_at) is older than `before`."""
    return list(db.batches().find({"status": {"$in": ACTIVE}, "updated_at": {"$lt": before}})
                .sort("updated_at", 1).limit(limit))


def claim_stalled(batch: dict) -> dict | None:
    """Mark a stalled batch as swept now, only if nothing touched it since it was read.

    Bumping updated_at also restarts its stall clock, so the same batch is not re-enqueued
    by every sweep while its recovered work waits in the queue. `sweeps` counts the claims in
    a row that found no progress since the previous one (finished image slots; parsing counts
    as progress too), so the sweeper can give up on a batch whose work keeps dying while one
    that advances between stalls is never given up on.
    """
    stamp = now()
    progress = [bool(batch.get("parsed")), batch["images_processed"] + batch["images_failed"]]
    sweeps = batch.get("sweeps", 0) + 1 if batch.get("swept_progress") == progress else 1
    return db.batches().find_one_and_update(
        {"_id": batch["_id"], "status": batch["status"], "updated_at": batch["updated_at"]},
        {"$set": {"updated_at": stamp, "swept_at": stamp, "sweeps": sweeps,
                  "swept_progress": progress}},
        return_document=ReturnDocument.AFTER,
    )


def set_image_counts(batch_id: str, *, processed: int, failed: int) -> None:
    """Overwrite a processing batch's image counters with values re-derived from its images."""
    db.batches().update_one(
        {"_id": batch_id, "status": BatchStatus.PROCESSING.value},
        {"$set": {"images_processed": processed, "images_failed": failed, "updated_at": now()}})
