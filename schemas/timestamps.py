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


def parse_aware(raw: str) -> datetime:
    """An ISO 8601 time with a zone (`Z` allowed), in UTC. Raises ValueError when it is not one,
    has no zone, or lies outside what UTC can hold (`9999-12-31T23:59:59-14:00` is in year 10000
    in UTC)."""
    value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("needs a time zone (e.g. Z)")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 in UTC") from None


# A datetime field that serialises to JSON with iso_z (and documents itself as date-time).
Timestamp = Annotated[datetime, PlainSerializer(iso_z, return_type=str, when_used="json"),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
