"""Redis and the RQ queues: which queues exist and how jobs are put on them."""
from __future__ import annotations

import os
import threading

import redis
from rq import Queue

from infra.settings import get_settings

BATCHES = "batches"   # one job per upload: parse the CSV and fan out
IMAGES = "images"     # chunk jobs: many images each
WEBHOOKS = "webhooks"  # one job per delivery attempt
ALL_QUEUES = (BATCHES, IMAGES, WEBHOOKS)

_lock = threading.Lock()
_state: dict = {"conn": None, "pid": None, "fixed": False}


def use_connection(conn) -> None:
    """Install a Redis connection (the embedded default's in-memory one); None forgets it."""
    with _lock:
        _state.update(conn=conn, pid=os.getpid(), fixed=conn is not None)


def get_redis() -> redis.Redis:
    """The process's Redis connection, created on first use."""
    with _lock:
        if _state["conn"] is None or (not _state["fixed"] and _state["pid"] != os.getpid()):
            url = get_settings().redis_url or "redis://localhost:6379/0"
            _state.update(
                conn=redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30),
                pid=os.getpid(),
            )
        return _state["conn"]


def get_queue(name: str) -> Queue:
    return Queue(name, connection=get_redis(), default_timeout=get_settings().job_timeout_s)
