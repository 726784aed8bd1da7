"""Re-imports: when an image processed before may be recognised and its outputs used again.

An input URL's outputs are reused only for the same owner (API key) and the same output
settings, named by one fingerprint string: everything that changes the bytes of the outputs.
The image is recognised by the validators its server sent (`ETag`, `Last-Modified`, asked back
with a conditional GET) or by the SHA-256 of its bytes.
"""
from __future__ import annotations

import hashlib
import json

# Raise when a change to worker/encode.py changes the bytes it writes for the same settings:
# outputs made before then are no longer what these settings make, so none is reused.
ENCODER_VERSION = 1

MAX_VALIDATOR = 512


def output_fingerprint(*, quality: int, optimize: bool, webp_method: int, keep_original: bool,
                       sizes: dict[str, int], full_size: bool = True) -> str:
    """The output settings of a batch as one string: equal strings, equal output bytes.

    Sizes are by name (their outputs are named after them), in name order (the order asked
    only orders the CSV columns). Without a full-size output (`full_size=false`) the outputs
    differ (the main one is the largest size, JPEGs are drafted): named at the end, so the
    fingerprints of batches with a full-size output stay what they were."""
    named = ",".join(f"{name}={edge}" for name, edge in sorted(sizes.items()))
    return (f"v{ENCODER_VERSION};q={quality};optimize={int(bool(optimize))};"
            f"webp_method={webp_method};keep_original={int(bool(keep_original))};sizes={named}"
            + ("" if full_size else ";full_size=0"))


def source_id(owner: str | None, fingerprint: str, url: str) -> str:
    """The id of what is remembered of one URL for one owner and fingerprint (no owner, when the
    service has no API keys, is an owner of its own: never the same as a key named "None")."""
    return hashlib.sha256(json.dumps([owner, fingerprint, url]).encode("utf-8")).hexdigest()


class SourceLookup:
    """What a store looks up for a chunk's URLs: their ids for one owner and fingerprint, and
    which records found are theirs (an id is a hash: its URL and fingerprint are checked)."""

    def __init__(self, owner: str | None, fingerprint: str, urls):
        self.fingerprint = fingerprint
        self._wanted = {source_id(owner, fingerprint, url): url for url in set(urls)}
        self.ids = list(self._wanted)

    def found(self, records) -> dict:
        """url -> record, of the `records` (SourceRecord) that are what was looked for."""
        return {record.url: record for record in records
                if self._wanted.get(record.id) == record.url
                and record.fingerprint == self.fingerprint}


def content_hash(data: bytes) -> str:
    """The SHA-256 of an image's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def validator(value: str | None) -> str | None:
    """A response's `ETag` or `Last-Modified` as it may be sent back in a request: trimmed,
    visible ASCII and spaces only, at most MAX_VALIDATOR characters; else None (not kept)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_VALIDATOR or not all(32 <= ord(c) <= 126 for c in value):
        return None
    return value
