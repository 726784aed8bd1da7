"""Redis and the RQ queues: which queues exist and how jobs are put on them."""
from __future__ import annotations

import redis
from rq import Queue

from infra.per_process import per_process
from infra.settings import get_settings

BATCHES = "batches"   # one job per upload: parse the CSV and fan out
IMAGES = "images"     # chunk jobs: many images each
WEBHOOKS = "webhooks"  # one job per delivery attempt
# Every queue, most urgent first: the order a worker takes them in. The one list of queues:
# `python -m worker` (Makefile, Procfile, compose), the embedded worker and metrics read it.
QUEUE_ORDER = (WEBHOOKS, BATCHES, IMAGES)
ALL_QUEUES = QUEUE_ORDER


def use_connection(conn) -> None:
    """Install a Redis connection (the embedded default's in-memory one); None forgets it."""
    if conn is None:
        _connection.reset()
    else:
        _connection.install(conn)


@per_process
def _connection() -> redis.Redis:
    url = get_settings().redis_url or "redis://localhost:6379/0"
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)


def get_redis() -> redis.Redis:
    """The process's Redis connection, created on first use."""
    return _connection()


def get_queue(name: str) -> Queue:
    return Queue(name, connection=get_redis(), default_timeout=get_settings().job_timeout_s)
