"""Page cursors: an opaque, URL-safe encoding of the position after a page's last item."""
from __future__ import annotations

import base64
import json


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
