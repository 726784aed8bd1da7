"""MongoDB access: one lazily created client per process, the collections, and their indexes."""
from __future__ import annotations

import pymongo
from pymongo.database import Database

from infra.per_process import per_process
from infra.settings import get_settings

IDEMPOTENCY_TTL_S = 24 * 3600


def use_client(client) -> None:
    """Install a client (a mongomock one for the embedded default and tests); None forgets it."""
    if client is None:
        _client.reset()
    else:
        _client.install(client)  # an installed client is not re-created after a fork


@per_process
def _client():
    # PyMongo is not fork-safe: each process makes its own.
    settings = get_settings()
    return pymongo.MongoClient(
        settings.mongo_url or "mongodb://localhost:27017",
        serverSelectionTimeoutMS=int(settings.mongo_timeout_s * 1000),
        connectTimeoutMS=int(settings.mongo_timeout_s * 1000),
        tz_aware=True,
    )


def get_client():
    """The process's MongoDB client, created on first use."""
    return _client()


def get_db() -> Database:
    """The service's database."""
    return get_client()[get_settings().mongo_db]


def batches():
    return get_db()["batches"]


def products():
    return get_db()["products"]


def images():
    return get_db()["images"]


def deliveries():
    return get_db()["deliveries"]


def subscriptions():
    return get_db()["subscriptions"]


def idempotency_keys():
    return get_db()["idempotency_keys"]


def sources():
    """What re-imports may reuse (SourceRecord), read and written by `_id` only."""
    return get_db()["sources"]


def ensure_indexes() -> None:
    """Create the index behind every query the service makes (idempotent)."""
    batches().create_index([("owner", 1), ("created_at", -1), ("_id", -1)])
    batches().create_index([("owner", 1), ("status", 1), ("created_at", -1), ("_id", -1)])
    batches().create_index([("status", 1), ("updated_at", 1)])
    # Rows: pages and output.csv in line order (all rows, or accepted ones); a repeated
    # S. No.'s first line.
    products().create_index([("batch_id", 1), ("line", 1)], unique=True)
    products().create_index([("batch_id", 1), ("status", 1), ("line", 1)])
    products().create_index([("batch_id", 1), ("serial_no", 1)])
    # Images: by _id for every per-image change; a chunk's pending images; the chunks that
    # still have pending images, a batch's failed ones and its slot counts.
    images().create_index([("batch_id", 1), ("chunk", 1), ("status", 1)])
    images().create_index([("batch_id", 1), ("status", 1), ("chunk", 1)])
    deliveries().create_index([("batch_id", 1), ("created_at", 1)])
    deliveries().create_index([("status", 1), ("next_attempt_at", 1)])
    subscriptions().create_index([("owner", 1), ("created_at", 1)])
    # Idempotency keys are remembered for 24 hours, as Stripe does.
    idempotency_keys().create_index("created_at", expireAfterSeconds=IDEMPOTENCY_TTL_S)
