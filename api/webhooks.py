"""Webhook subscriptions, the delivery log and redelivery.

    POST   /api/v1/webhooks                       subscribe: {"url", "events"?, "description"?}
    GET    /api/v1/webhooks                       the caller's subscriptions
    GET    /api/v1/webhooks/{id}                  one subscription
    PATCH  /api/v1/webhooks/{id}                  change url, events, description or enabled
    DELETE /api/v1/webhooks/{id}
    POST   /api/v1/webhooks/{id}/rotate-secret    new secret; the old one also signs for 24 h
    GET    /api/v1/batches/{id}/deliveries        every delivery of a batch's events, with attempts
    GET    /api/v1/deliveries/{id}                one delivery
    POST   /api/v1/deliveries/{id}/redeliver      send it once more (same webhook-id)
"""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request, url_for
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from api.auth import owner
from api.batches import load_batch
from api import app_settings
from api.errors import ApiError, not_found
from api.rate_limits import check_redelivery
from infra import jobs, stores
from infra.url_safety import UnsafeUrl, check_url
from schemas.quoting import excerpt, quoted
from schemas.records import EVENTS, DeliveryRecord, SubscriptionRecord
from schemas.timestamps import iso_z
from schemas.webhook import WebhookSubscriptionIn, WebhookSubscriptionPatch

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")

MAX_SUBSCRIPTIONS_PER_OWNER = 100


def validated_url(value: object, field: str = "url") -> str:
    """A webhook URL this server may call, or a 422 problem (shared with the upload endpoint)."""
    try:
        return check_url(value, allow_private=app_settings().allow_private_urls)
    except UnsafeUrl as error:
        raise ApiError(422, f"Invalid {field}", f"{field}: {error}", kind="invalid-webhook-url",
                       field=field) from None


# --- subscriptions ----------------------------------------------------------------------------

def _json_object() -> dict:
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type", "send a JSON object with Content-Type "
                       "application/json", kind="unsupported-media-type")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # json's decoder recurses once per level; silent= only catches ValueError
        raise ApiError(400, "Invalid JSON", "the body is nested too deeply to be read",
                       kind="invalid-json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON", "the body must be a JSON object", kind="invalid-json")
    return body


# Which problem type a bad value of each field answers with (url keeps the upload's type).
FIELD_KINDS = {"url": "invalid-webhook-url", "events": "invalid-events"}


def _validated_body(model: type[BaseModel]) -> BaseModel:
    """The JSON body read through its model (as the OpenAPI document shows it), or a 422 naming
    the first field that is wrong, unknown keys included."""
    try:
        return model.model_validate(_json_object())
    except ValidationError as error:
        item = error.errors()[0]
        field = str(item["loc"][0]) if item["loc"] else "body"
        if item["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise ApiError(422, "Unknown field", f"unknown field {quoted(field)}; known: {known}",
                           kind="unknown-field", field=excerpt(field)) from None
        if item["type"] == "missing":
            detail = f"{field} is required"
        elif field == "events":
            detail = "events must be a non-empty list of event names: " + ", ".join(EVENTS)
            if item["type"] == "literal_error":
                detail = f"unknown event {quoted(item['input'])}; known: " + ", ".join(EVENTS)
        else:
            detail = f"{field}: {item['msg']}"
        raise ApiError(422, f"Invalid {field}", detail,
                       kind=FIELD_KINDS.get(field, "invalid-field"), field=field) from None


def _events(events: list[str]) -> list[str]:
    """The events in their canonical order, each once."""
    return [event for event in EVENTS if event in events]


_iso = iso_z  # the one timestamp format (schemas/timestamps.py)


def subscription_json(doc: SubscriptionRecord, *, secret: bool = False) -> dict:
    out = {"id": doc.id, "url": doc.url, "events": doc.events,
           "description": doc.description, "enabled": doc.enabled,
           "disabled_reason": doc.disabled_reason, "created_at": _iso(doc.created_at),
           "updated_at": _iso(doc.updated_at)}
    if doc.previous_secret_expires_at:
        out["previous_secret_expires_at"] = _iso(doc.previous_secret_expires_at)
    if secret:
        out["secret"] = doc.secret
    return out


def _subscription(subscription_id: str) -> SubscriptionRecord:
    doc = stores.webhooks().get_subscription(subscription_id, owner())
    if doc is None:
        raise not_found("webhook subscription", subscription_id)
    return doc


@bp.post("/webhooks")
def create_subscription():
    body = _validated_body(WebhookSubscriptionIn)
    url = validated_url(body.url)
    if stores.webhooks().count_subscriptions(owner()) >= MAX_SUBSCRIPTIONS_PER_OWNER:
        raise ApiError(409, "Too many subscriptions", f"at most "
                       f"{MAX_SUBSCRIPTIONS_PER_OWNER} webhook subscriptions; "
                       "delete one first", kind="too-many-subscriptions")
    doc = stores.webhooks().create_subscription(SubscriptionRecord.new(
        owner=owner(), url=url, events=_events(body.events), description=body.description))
    response = jsonify(subscription_json(doc, secret=True))
    response.status_code = 201
    response.headers["Location"] = url_for("webhooks.get_subscription", subscription_id=doc.id)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/webhooks")
def list_subscriptions():
    return jsonify({"items": [subscription_json(d) for d in stores.webhooks().list_subscriptions(owner())],
                    "next_cursor": None})


@bp.get("/webhooks/<subscription_id>")
def get_subscription(subscription_id: str):
    return jsonify(subscription_json(_subscription(subscription_id)))


@bp.patch("/webhooks/<subscription_id>")
def update_subscription(subscription_id: str):
    _subscription(subscription_id)
    body = _validated_body(WebhookSubscriptionPatch)
    sent = body.model_fields_set
    changes: dict = {}
    if "url" in sent:
        changes["url"] = validated_url(body.url)
    if "events" in sent:
        changes["events"] = _events(body.events)
    if "description" in sent:
        changes["description"] = body.description
    if "enabled" in sent:
        changes["enabled"] = body.enabled
        if not body.enabled:
            changes["disabled_reason"] = "disabled through the API"
    doc = stores.webhooks().update_subscription(subscription_id, owner(), changes)
    if doc is None:
        raise not_found("webhook subscription", subscription_id)
    return jsonify(subscription_json(doc))


@bp.delete("/webhooks/<subscription_id>")
def delete_subscription(subscription_id: str):
    if not stores.webhooks().delete_subscription(subscription_id, owner()):
        raise not_found("webhook subscription", subscription_id)
    return "", 204


@bp.post("/webhooks/<subscription_id>/rotate-secret")
def rotate_secret(subscription_id: str):
    _subscription(subscription_id)
    doc = stores.webhooks().rotate_secret(subscription_id, owner())
    if doc is None:
        raise ApiError(409, "Conflict", "the secret changed while rotating; try again",
                       kind="conflict")
    response = jsonify(subscription_json(doc, secret=True))
    response.headers["Cache-Control"] = "no-store"
    return response


# --- deliveries -------------------------------------------------------------------------------

def delivery_json(doc: DeliveryRecord) -> dict:
    return {
        "id": doc.id, "batch_id": doc.batch_id, "event": doc.event, "url": doc.url,
        "subscription_id": doc.subscription_id, "status": doc.status,
        "created_at": _iso(doc.created_at), "attempt_count": doc.attempt_count,
        "next_attempt_at": _iso(doc.next_attempt_at) if doc.status == "pending" else None,
        "attempts": [{
            "number": a.number, "manual": a.manual, "at": _iso(a.at),
            "url": a.url, "status_code": a.status_code, "error": a.error,
            "duration_ms": a.duration_ms, "response": a.response,
            "next_attempt_at": _iso(a.next_attempt_at),
        } for a in doc.attempts],
    }


@bp.get("/batches/<batch_id>/deliveries")
def list_deliveries(batch_id: str):
    load_batch(batch_id)  # 404 for unknown and other owners' batches
    return jsonify({"items": [delivery_json(d) for d in stores.webhooks().list_deliveries(batch_id)],
                    "next_cursor": None})


def _delivery(delivery_id: str) -> DeliveryRecord:
    doc = stores.webhooks().get_delivery(delivery_id, owner())
    if doc is None:
        raise not_found("webhook delivery", delivery_id)
    return doc


@bp.get("/deliveries/<delivery_id>")
def get_delivery(delivery_id: str):
    return jsonify(delivery_json(_delivery(delivery_id)))


@bp.post("/deliveries/<delivery_id>/redeliver")
def redeliver(delivery_id: str):
    doc = _delivery(delivery_id)
    if doc.subscription_id and stores.webhooks().get_subscription(
            doc.subscription_id, any_owner=True) is None:
        raise ApiError(409, "Subscription deleted", "this delivery's webhook subscription was "
                       "deleted; there is nowhere to send it", kind="subscription-deleted")
    try:
        check_redelivery()
        jobs.enqueue_redelivery(delivery_id)
    except RedisError as error:
        log.error("could not queue a redelivery: %s", error)
        raise ApiError(503, "Service Unavailable", "Redis is not reachable right now; try again",
                       kind="dependency-unavailable", headers={"Retry-After": "30"},
                       service="Redis") from None
    response = jsonify(delivery_json(doc))
    response.status_code = 202
    return response
