"""Completion events: one delivery per target for each finish of a batch, enqueued once."""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone

import requests
from pymongo.errors import DuplicateKeyError
from standardwebhooks import Webhook

from infra import batch_store, db, queues
from infra.settings import get_settings

log = logging.getLogger(__name__)


def event_type(status: str) -> str:
    return f"batch.{status}"


def batch_finished(batch: dict) -> None:
    """Record and enqueue the batch's completion event for its webhook_url (exactly once)."""
    if not batch.get("webhook_url"):
        return
    event = event_type(batch["status"])
    target = batch["webhook_url"]
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    delivery_id = f"msg_{batch['_id']}_{batch.get('finish_seq', 1)}_{digest}"
    body = json.dumps({
        "type": event,
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "data": batch_store.to_json(batch, get_settings().public_api_url or ""),
    }, separators=(",", ":"))
    try:
        db.deliveries().insert_one({
            "_id": delivery_id, "batch_id": batch["_id"], "owner": batch.get("owner"),
            "event": event, "url": target, "subscription_id": None, "body": body,
            "status": "pending", "attempts": [], "created_at": batch_store.now(),
        })
    except DuplicateKeyError:
        return  # this finish was already announced
    queues.get_queue(queues.WEBHOOKS).enqueue(deliver, delivery_id, job_id=f"deliver-{delivery_id}")


def deliver(delivery_id: str) -> None:
    """One signed POST of a stored delivery."""
    settings = get_settings()
    delivery = db.deliveries().find_one({"_id": delivery_id})
    if delivery is None or delivery["status"] == "succeeded":
        return
    timestamp = datetime.now(timezone.utc)
    signature = Webhook(settings.webhook_secret).sign(delivery_id, timestamp, delivery["body"])
    headers = {"content-type": "application/json", "webhook-id": delivery_id,
               "webhook-timestamp": str(int(timestamp.timestamp())),
               "webhook-signature": signature}
    try:
        response = requests.post(delivery["url"], data=delivery["body"].encode(), headers=headers,
                                 timeout=settings.webhook_timeout_s, allow_redirects=False)
        ok = 200 <= response.status_code < 300
        outcome = {"status_code": response.status_code}
    except requests.RequestException as error:
        ok, outcome = False, {"error": type(error).__name__}
    db.deliveries().update_one({"_id": delivery_id}, {
        "$set": {"status": "succeeded" if ok else "failed"},
        "$push": {"attempts": {"at": timestamp, **outcome}}})
