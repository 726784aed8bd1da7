"""API keys: who is calling /api/v1, and whose batches and subscriptions they may see.

`API_KEYS` is either `name:key,name:key` or the path of a file (`/…`, `./…` or `@path`) holding one
`name:key` a line (blank lines and `#` comments are skipped). A name may have two keys while its
key is rotated; two names may not share a key. When keys are configured every
/api/v1 call needs `Authorization: Bearer <key>`; the key's name becomes `flask.g.owner`, and every
query is scoped by it, so another owner's ids answer 404. Without keys the API is open, `g.owner`
stays None, and a warning is logged at start-up.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from flask import Flask, g, request

from api.errors import problem
from infra.settings import Settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
EXTENSION = "batchpress.api_keys"


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


def parse_keys(value: str | None) -> ApiKeys:
    """Read `name:key,name:key` or a file of `name:key` lines; raise ApiKeyError when malformed."""
    if not value or not value.strip():
        return ApiKeys(())
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
    entries: list[tuple[str, bytes]] = []
    seen_keys: set[bytes] = set()
    for number, item in enumerate(items, 1):
        name, sep, key = item.partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ApiKeyError(f"entry {number} {where} is not name:key")
        digest = hashlib.sha256(key.encode()).digest()
        if digest in seen_keys:
            raise ApiKeyError(f"two entries {where} share the same key (entry {number}, {name!r})")
        seen_keys.add(digest)
        entries.append((name, digest))
    return ApiKeys(tuple(entries))


def owner() -> str | None:
    """The calling key's name (set by the /api/v1 guard below), or None when the API is open."""
    return g.get("owner")


def keys_of(app: Flask) -> ApiKeys:
    return app.extensions.get(EXTENSION) or ApiKeys(())


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def register(app: Flask, settings: Settings) -> None:
    """Read the keys (exits on a malformed API_KEYS) and guard /api/v1 with them."""
    try:
        keys = parse_keys(settings.api_keys)
    except ApiKeyError as error:
        raise SystemExit(f"Invalid settings:\n  API_KEYS: {error}") from None
    app.extensions[EXTENSION] = keys
    if keys:
        log.info("API keys configured for %d owner(s): %s", len(keys.names),
                 ", ".join(keys.names))
    else:
        log.warning("API_KEYS is not set: the API is open to anyone who can reach it and every "
                    "caller sees every batch. Set API_KEYS=name:key,... in production.")

    @app.before_request
    def _authenticate():
        g.owner = None
        path = request.path
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            return None
        if request.method == "OPTIONS" or not keys:  # CORS preflights carry no credentials
            return None
        token = bearer_token()
        owner = keys.owner_of(token) if token else None
        if token is None:  # a browser's EventSource sends a short-lived ?token= instead
            from api.event_tokens import owner_from_query
            owner = owner_from_query(keys)
        if owner is None:
            if token is not None:
                detail = "the API key is not valid"
            elif request.args.get("token"):
                detail = ("the events token is not valid for this batch or has expired; get a "
                          "new one from POST /api/v1/batches/{id}/events-token")
            else:
                detail = "this API needs an 'Authorization: Bearer <key>' header"
            return problem(401, "Unauthorized", detail, kind="unauthorized",
                           headers={"WWW-Authenticate": 'Bearer realm="batchpress"'})
        g.owner = owner
        return None
