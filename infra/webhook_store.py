"""Webhook subscriptions and the delivery log in MongoDB.

A subscription: `{_id: "whk_…", owner, url, events, description, enabled, disabled_reason,
secret, previous_secret, previous_secret_expires_at, created_at, updated_at}`. Secrets are kept
(HMAC needs them) but never shown after creation or rotation.

A delivery is one event for one target: `{_id: "msg_…" (the webhook-id), batch_id, owner, event,
finish_seq, url, subscription_id, body (the exact bytes sent, as text), status (pending |
succeeded | failed), attempts: [...], attempt_count, next_attempt_no, next_attempt_at,
lease_until, created_at, updated_at}`. Its `_id` is derived from the batch, the finish and the
target, so inserting it is what makes an event happen exactly once.
"""
from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta, timezone

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from infra import db
from schemas.timestamps import now

EVENTS = ("batch.completed", "batch.completed_with_errors", "batch.failed", "batch.cancelled")
ROTATION_OVERLAP = timedelta(hours=24)
MAX_SUBSCRIPTIONS_PER_OWNER = 100

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (Standard Webhooks' format)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_subscription_id() -> str:
    return "whk_" + secrets.token_hex(12)


# --- subscriptions ----------------------------------------------------------------------------

def create_subscription(*, owner: str | None, url: str, events: list[str],
                        description: str | None) -> dict:
    stamp = now()
    doc = {"_id": new_subscription_id(), "owner": owner, "url": url, "events": events,
           "description": description, "enabled": True, "disabled_reason": None,
           "disabled_at": None, "secret": new_secret(), "previous_secret": None,
           "previous_secret_expires_at": None, "created_at": stamp, "updated_at": stamp}
    db.subscriptions().insert_one(doc)
    return doc


def count_subscriptions(owner: str | None) -> int:
    return db.subscriptions().count_documents({"owner": owner})


def list_subscriptions(owner: str | None) -> list[dict]:
    return list(db.subscriptions().find({"owner": owner}).sort([("created_at", 1), ("_id", 1)]))


def get_subscription(subscription_id: str, owner: str | None = None, *,
                     any_owner: bool = False) -> dict | None:
    query: dict = {"_id": subscription_id}
    if not any_owner:
        query["owner"] = owner
    return db.subscriptions().find_one(query)


def update_subscription(subscription_id: str, owner: str | None, changes: dict) -> dict | None:
    changes = {**changes, "updated_at": now()}
    if changes.get("enabled") is True:
        changes.update(disabled_reason=None, disabled_at=None)
    return db.subscriptions().find_one_and_update(
        {"_id": subscription_id, "owner": owner}, {"$set": changes},
        return_document=ReturnDocument.AFTER)


def delete_subscription(subscription_id: str, owner: str | None) -> bool:
    return db.subscriptions().delete_one({"_id": subscription_id, "owner": owner}).deleted_count == 1


def rotate_secret(subscription_id: str, owner: str | None) -> dict | None:
    """A new secret; the one it replaces keeps signing (alongside) for ROTATION_OVERLAP."""
    current = get_subscription(subscription_id, owner)
    if current is None:
        return None
    stamp = now()
    return db.subscriptions().find_one_and_update(
        {"_id": subscription_id, "owner": owner, "secret": current["secret"]},
        {"$set": {"secret": new_secret(), "previous_secret": current["secret"],
                  "previous_secret_expires_at": stamp + ROTATION_OVERLAP, "updated_at": stamp}},
        return_document=ReturnDocument.AFTER)


def disable_subscription(subscription_id: str, reason: str) -> None:
    stamp = now()
    db.subscriptions().update_one(
        {"_id": subscription_id},
        {"$set": {"enabled": False, "disabled_reason": reason, "disabled_at": stamp,
                  "updated_at": stamp}})


def subscribers_for(owner: str | None, event: str) -> list[dict]:
    """Enabled subscriptions of `owner` that asked for `event`."""
    return list(db.subscriptions().find({"owner": owner, "enabled": True, "events": event})
                .sort([("created_at", 1), ("_id", 1)]))


def signing_secrets(subscription: dict, at: datetime | None = None) -> list[str]:
    """The secrets that sign for a subscription now: the current one, and during a rotation the
    previous one too."""
    at = at or now()
    found = [subscription["secret"]]
    expires = subscription.get("previous_secret_expires_at")
    if subscription.get("previous_secret") and expires and _aware(expires) > at:
        found.append(subscription["previous_secret"])
    return found


# --- deliveries -------------------------------------------------------------------------------

def insert_delivery(doc: dict) -> bool:
    """Store a new delivery; False when one with the same id already exists (already announced)."""
    stamp = now()
    full = {"status": PENDING, "attempts": [], "attempt_count": 0, "next_attempt_no": 1,
            "next_attempt_at": stamp, "lease_until": None, "created_at": stamp,
            "updated_at": stamp, **doc}
    try:
        db.deliveries().insert_one(full)
    except DuplicateKeyError:
        return False
    return True


def get_delivery(delivery_id: str, owner: str | None = None, *, any_owner: bool = False) -> dict | None:
    query: dict = {"_id": delivery_id}
    if not any_owner:
        query["owner"] = owner
    return db.deliveries().find_one(query)


def list_deliveries(batch_id: str) -> list[dict]:
    return list(db.deliveries().find({"batch_id": batch_id}, {"body": 0})
                .sort([("created_at", 1), ("_id", 1)]))


def claim_attempt(delivery_id: str, number: int, lease_until: datetime) -> dict | None:
    """Take scheduled attempt `number` of a pending delivery; None when it is not this attempt's
    turn (already made, delivery finished, or another worker holds it)."""
    return db.deliveries().find_one_and_update(
        {"_id": delivery_id, "status": PENDING, "next_attempt_no": number,
         "$or": [{"lease_until": None}, {"lease_until": {"$lt": now()}}]},
        {"$set": {"lease_until": lease_until}},
        return_document=ReturnDocument.AFTER)


def record_attempt(delivery_id: str, number: int, attempt: dict, *, status: str,
                   next_attempt_at: datetime | None) -> None:
    """Log scheduled attempt `number` and move the delivery on (to the next attempt or its end)."""
    db.deliveries().update_one(
        {"_id": delivery_id, "next_attempt_no": number},
        {"$push": {"attempts": attempt},
         "$inc": {"attempt_count": 1},
         "$set": {"status": status, "next_attempt_no": number + 1,
                  "next_attempt_at": next_attempt_at, "lease_until": None,
                  "last_status_code": attempt.get("status_code"),
                  "last_error": attempt.get("error"), "updated_at": now()}})


def record_manual_attempt(delivery_id: str, attempt: dict, *, succeeded: bool) -> None:
    """Log a redelivery; a success marks the delivery succeeded (and stops its retries)."""
    changes: dict = {"last_status_code": attempt.get("status_code"),
                     "last_error": attempt.get("error"), "updated_at": now()}
    if succeeded:
        changes.update(status=SUCCEEDED, next_attempt_at=None, lease_until=None)
    db.deliveries().update_one({"_id": delivery_id},
                               {"$push": {"attempts": attempt}, "$inc": {"attempt_count": 1},
                                "$set": changes})


def overdue(grace: timedelta, limit: int = 1000) -> list[dict]:
    """Pending deliveries whose next attempt is late by more than `grace` and not held by a
    worker: their scheduled job was lost (Redis flushed, enqueue failed, worker died)."""
    stamp = now()
    return list(db.deliveries().find(
        {"status": PENDING, "next_attempt_at": {"$lt": stamp - grace},
         "$or": [{"lease_until": None}, {"lease_until": {"$lt": stamp}}]},
        {"_id": 1, "next_attempt_no": 1}).limit(limit))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
