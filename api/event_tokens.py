"""Short-lived tokens that let a browser's EventSource open a batch's events stream.

An EventSource cannot send an `Authorization` header, and an API key must never travel in a URL
(it ends up in proxy logs and browser history). So a caller holding a key asks for a token bound
to one batch and one owner, valid EVENTS_TOKEN_TTL_S seconds, and opens
`/api/v1/batches/{id}/events?token=…`. The token is signed with a secret derived from the
configured API keys, so every API process accepts every other's tokens and no new secret needs
managing; changing API_KEYS invalidates the tokens already issued.
"""
from __future__ import annotations

import hashlib

from flask import Blueprint, Flask, current_app, jsonify, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from api import app_settings
from api.auth import keys_of, owner
from api.batches import load_batch
from infra.api_keys import ApiKeys

bp = Blueprint("event_tokens", __name__, url_prefix="/api/v1/batches")
SALT = "batchpress.events-token"
EVENTS_ENDPOINT = "control.batch_events"


def _serializer(keys: ApiKeys) -> URLSafeTimedSerializer:
    secret = hashlib.sha256(b"batchpress events-token\0"
                            + b"".join(sorted(digest for _, digest in keys.entries))).digest()
    return URLSafeTimedSerializer(secret, salt=SALT)


def owner_from_query(keys: ApiKeys) -> str | None:
    """The owner named by a valid `?token=` on an events stream request, else None."""
    raw = request.args.get("token")
    if not raw or not keys or request.endpoint != EVENTS_ENDPOINT or request.method != "GET":
        return None
    try:
        data = _serializer(keys).loads(raw, max_age=app_settings().events_token_ttl_s)
    except BadSignature:  # also expired ones (SignatureExpired is a BadSignature)
        return None
    if not isinstance(data, dict) or data.get("b") != (request.view_args or {}).get("batch_id"):
        return None
    name = data.get("o")
    return name if isinstance(name, str) and name in keys.names else None


@bp.post("/<batch_id>/events-token")
def issue(batch_id: str):
    load_batch(batch_id)  # 404 for another owner's batch
    keys = keys_of(current_app)
    ttl = app_settings().events_token_ttl_s
    token = _serializer(keys).dumps({"o": owner(), "b": batch_id}) if keys else None
    events = url_for("control.batch_events", batch_id=batch_id,
                     **({"token": token} if token else {}))
    return jsonify({"token": token, "expires_in": ttl if token else None, "events_url": events})


def register(app: Flask) -> None:
    app.register_blueprint(bp)
