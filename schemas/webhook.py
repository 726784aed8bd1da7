"""Webhook subscriptions, deliveries and the event body, as the API shows them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.batch import BatchOut
from schemas.timestamps import Timestamp

EventName = Literal["batch.completed", "batch.completed_with_errors", "batch.failed",
                    "batch.cancelled"]
EVENTS: tuple[str, ...] = EventName.__args__  # type: ignore[attr-defined]


MAX_URL = 2048
MAX_DESCRIPTION = 500
URL_EXAMPLE = "https://hooks.example.com/batchpress"


class WebhookSubscriptionIn(BaseModel):
    """A new subscription; unknown keys are refused."""
    model_config = ConfigDict(extra="forbid", strict=True)
    url: str = Field(description="Absolute https URL of a public host to POST events to.",
                     min_length=1, max_length=MAX_URL, examples=[URL_EXAMPLE])
    events: list[EventName] = Field(default_factory=lambda: list(EVENTS), min_length=1,
                                    description="Events to send; all of them when left out.",
                                    examples=[["batch.completed", "batch.failed"]])
    description: str | None = Field(None, max_length=MAX_DESCRIPTION,
                                    examples=["Orders team: reindex the shop"])


def _absent_is_not_null(schema: dict) -> None:
    """A key left out of a PATCH is unchanged, which is not the same as null: say no default."""
    for prop in schema.get("properties", {}).values():
        if "anyOf" not in prop and "default" in prop and prop["default"] is None:
            del prop["default"]


class WebhookSubscriptionPatch(BaseModel):
    """Changes to a subscription: only the keys sent change (`description: null` clears it)."""
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_absent_is_not_null)
    url: str = Field(None, min_length=1, max_length=MAX_URL, examples=[URL_EXAMPLE])
    events: list[EventName] = Field(None, min_length=1, examples=[["batch.failed"]])
    description: str | None = Field(None, max_length=MAX_DESCRIPTION,
                                    examples=["Orders team: reindex the shop"])
    enabled: bool = Field(None, description="false stops deliveries; true resumes them.",
                          examples=[True])


class WebhookSubscription(BaseModel):
    id: str
    url: str
    events: list[EventName]
    description: str | None = None
    enabled: bool
    disabled_reason: str | None = None
    created_at: Timestamp
    updated_at: Timestamp | None = None
    previous_secret_expires_at: Timestamp | None = Field(
        None, description="Until then the previous secret signs too (after a rotation).")


class WebhookSubscriptionWithSecret(WebhookSubscription):
    secret: str = Field(description="`whsec_…`: shown only in this answer; keep it.")


class WebhookSubscriptionPage(BaseModel):
    items: list[WebhookSubscription]
    next_cursor: str | None = None


class DeliveryAttempt(BaseModel):
    number: int | None = None
    manual: bool = False
    at: Timestamp
    url: str | None = None
    status_code: int | None = Field(None, description="The receiver's HTTP status, if any.")
    error: str | None = Field(None, description="Why the attempt failed, without an answer.")
    duration_ms: float | None = None
    response: str | None = Field(None, description="The start of the receiver's answer.")
    next_attempt_at: Timestamp | None = None


class Delivery(BaseModel):
    id: str = Field(description="Also the `webhook-id` header of every attempt.")
    batch_id: str
    event: EventName
    url: str
    subscription_id: str | None = None
    status: Literal["pending", "succeeded", "failed"]
    created_at: Timestamp
    attempt_count: int = 0
    next_attempt_at: Timestamp | None = None
    attempts: list[DeliveryAttempt] = []


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None = None


class WebhookEvent(BaseModel):
    """The body of every webhook POST (Standard Webhooks signed)."""
    type: EventName
    timestamp: Timestamp
    data: BatchOut
