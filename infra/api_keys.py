"""Reading `API_KEYS`: the one parser, used by API authentication and by log redaction.

`API_KEYS` is either `name:key,name:key` or the path of a file (`/…`, `./…`, `../…`, `~…` or
`@path`) holding one `name:key` a line (blank lines and `#` comments are skipped). A name may have
two keys while its key is rotated; two names may not share a key. Errors never name a key.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass


class ApiKeyError(ValueError):
    """API_KEYS could not be read; the message says where (never which key)."""


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, held as SHA-256 digests so every comparison has the same length."""

    entries: tuple[tuple[str, bytes], ...]  # (name, sha256 of the key)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def names(self) -> list[str]:
        """Owner names, once each (a name may have several keys while one is being rotated)."""
        return list(dict.fromkeys(name for name, _ in self.entries))

    def owner_of(self, presented: str) -> str | None:
        """The name of the key presented, or None; constant time over every configured key."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for name, expected in self.entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found

    def key_matches(self, name: str, presented: str) -> bool:
        """Whether `presented` is the key named `name` (constant time)."""
        owner = self.owner_of(presented)
        return owner is not None and hmac.compare_digest(owner.encode(), name.encode())


def _is_file_reference(value: str) -> bool:
    return value.startswith(("/", "./", "../", "@", "~"))


def read_entries(value: str | None) -> list[tuple[str, str]]:
    """(name, key) of every entry of `name:key,name:key` or of the file named; raises
    ApiKeyError when malformed or unreadable."""
    if not value or not value.strip():
        return []
    value = value.strip()
    if _is_file_reference(value):
        path = os.path.expanduser(value.removeprefix("@"))
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as error:
            raise ApiKeyError(f"API_KEYS names the file {path!r}, which cannot be read: "
                              f"{error.strerror}") from None
        items = [line.strip() for line in lines]
        items = [line for line in items if line and not line.startswith("#")]
        where = f"in {path}"
    else:
        items = [part.strip() for part in value.split(",") if part.strip()]
        where = "in API_KEYS"
    entries: list[tuple[str, str]] = []
    seen_keys: set[str] = set()
    for number, item in enumerate(items, 1):
        name, sep, key = item.partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ApiKeyError(f"entry {number} {where} is not name:key")
        if key in seen_keys:
            raise ApiKeyError(f"two entries {where} share the same key (entry {number}, {name!r})")
        seen_keys.add(key)
        entries.append((name, key))
    return entries


def parse_keys(value: str | None) -> ApiKeys:
    """The keys of `API_KEYS`, as digests; raises ApiKeyError when malformed or unreadable."""
    return ApiKeys(tuple((name, hashlib.sha256(key.encode()).digest())
                         for name, key in read_entries(value)))
