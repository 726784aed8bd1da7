"""API keys: who is calling /api/v1, and whose batches and subscriptions they may see.

`API_KEYS` is read by infra/api_keys.py (the same reading the log redaction uses). When keys are
configured every /api/v1 call needs `Authorization: Bearer <key>`; the key's name becomes
`flask.g.owner`, and every query is scoped by it, so another owner's ids answer 404. Without keys the API is open, `g.owner`
stays None, and a warning is logged at start-up.
"""
from __future__ import annotations

import logging

from flask import Flask, g, request

from api.errors import problem
from infra.api_keys import ApiKeyError, ApiKeys, parse_keys
from infra.settings import Settings

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
EXTENSION = "batchpress.api_keys"


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
