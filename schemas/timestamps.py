"""One timestamp format for everything the API and its webhooks send: ISO 8601 in UTC with
milliseconds and `Z`, e.g. `2026-11-22T10:00:00.251Z` (MongoDB keeps milliseconds anyway)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


def now() -> datetime:
    """UTC now at MongoDB's millisecond precision, so a stored time reads back equal."""
    stamp = datetime.now(timezone.utc)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


def iso_z(value: datetime | None) -> str | None:
    """`2026-11-22T10:00:00.251Z`; a naive datetime is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


# A datetime field that serialises to JSON with iso_z (and documents itself as date-time).
Timestamp = Annotated[datetime, PlainSerializer(iso_z, return_type=str, when_used="json"),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
