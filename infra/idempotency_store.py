"""Idempotency keys of uploads in MongoDB: one record per (caller, key), kept for 24 hours."""
from __future__ import annotations

from pymongo.errors import DuplicateKeyError

from infra import db
from schemas.timestamps import now


def record_id(owner: str | None, key: str) -> str:
    """One record per (caller, key): `_id` is unique on every MongoDB, no extra index needed."""
    return f"{owner}:{key}"


def find(owner: str | None, key: str) -> dict | None:
    return db.idempotency_keys().find_one({"_id": record_id(owner, key)})


def claim(owner: str | None, key: str, *, batch_id: str, fingerprint: str) -> dict | None:
    """Record that this key made this batch; None when it was recorded first (by another request)."""
    try:
        doc = {"_id": record_id(owner, key), "owner": owner, "key": key, "batch_id": batch_id,
               "fingerprint": fingerprint, "created_at": now()}
        db.idempotency_keys().insert_one(doc)
        return doc
    except DuplicateKeyError:
        return None


def release(owner: str | None, key: str, batch_id: str) -> None:
    """Forget a key whose request did not go through (so the caller may send it again)."""
    db.idempotency_keys().delete_one({"_id": record_id(owner, key), "batch_id": batch_id})
