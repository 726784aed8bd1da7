"""Batch events: when a batch reaches a final state, one delivery per target, stored then queued.

`batch_finished(batch)` is called by whoever moved the batch to completed, completed_with_errors,
failed or cancelled, with the batch record as stored after that change (its `finish_seq`
counts the finishes). The body is serialised once and stored; the delivery id (the webhook-id)
is derived from batch id, finish_seq and target, so a second call for the same finish, from a
job that ran twice, adds nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone

from infra import jobs, stores
from infra.settings import get_settings
from schemas.batch import batch_json
from schemas.records import EVENTS, BatchRecord, DeliveryRecord
from schemas.timestamps import iso_z

log = logging.getLogger(__name__)


def event_type(status) -> str:
    return f"batch.{getattr(status, 'value', status)}"


def event_body(event: str, batch: BatchRecord) -> str:
    """The exact text every attempt of this event sends."""
    return json.dumps({
        "type": event,
        "timestamp": iso_z(datetime.now(timezone.utc)),
        "data": batch_json(batch, get_settings().public_api_url or ""),
    }, separators=(",", ":"), ensure_ascii=False)


def delivery_id(batch: BatchRecord, target: str) -> str:
    """Stable per (batch, finish, target): `msg_<batch>_<finish_seq>_<target>`."""
    return f"msg_{batch.id}_{batch.finish_seq or 1}_{target}"


def url_target(url: str) -> str:
    return "u" + hashlib.sha256(url.encode()).hexdigest()[:16]


def batch_finished(batch: BatchRecord) -> list[str]:
    """Record and queue the batch's final event for its webhook_url and every subscription of its
    owner that asked for it; returns the ids of the deliveries created by this call."""
    event = event_type(batch.status)
    if event not in EVENTS:
        log.warning("no webhook event for status %r of batch %s", batch.status.value, batch.id)
        return []
    targets: list[tuple[str, str | None, str]] = []  # (target key, subscription id, url)
    if batch.webhook_url:
        targets.append((url_target(batch.webhook_url), None, batch.webhook_url))
    try:
        for subscription in stores.webhooks().subscribers_for(batch.owner, event):
            targets.append((subscription.id, subscription.id, subscription.url))
    except Exception:  # noqa: BLE001 - the batch's own webhook_url still gets its event
        log.exception("could not read webhook subscriptions for batch %s", batch.id)
    if not targets:
        return []
    body = event_body(event, batch)
    created = []
    for key, subscription_id, url in targets:
        the_id = delivery_id(batch, key)
        try:
            inserted = stores.webhooks().insert_delivery(DeliveryRecord(
                id=the_id, batch_id=batch.id, owner=batch.owner, event=event,
                finish_seq=batch.finish_seq or 1, url=url, subscription_id=subscription_id,
                body=body))
        except Exception:  # noqa: BLE001 - one target's failure must not cost the others theirs
            log.exception("could not store webhook delivery %s", the_id)
            continue
        if not inserted:
            continue  # this finish was already announced to this target
        created.append(the_id)
        try:
            jobs.enqueue_webhook_attempt(the_id, 1)
        except Exception:  # noqa: BLE001 - stored as pending and due: recover_overdue sends it
            log.exception("could not queue webhook delivery %s", the_id)
    return created
