"""Per-host download slots shared by every worker through Redis, and per-host pauses.

A slot is one of `limit` keys per host, taken with `SET NX PX`: at most `limit` downloads from
a host are in flight across all processes. Each key expires after its lease (longer than any
download may take), so a killed worker cannot keep a slot. A pause (`pause_host`, set by a 429 or
503 with Retry-After) makes every worker leave that host alone until it passes.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from typing import Iterator

import redis

PREFIX = "bp:host"
_POLL_S = (0.01, 0.2)  # first and longest wait between tries for a slot


def _slot_key(host: str, n: int) -> str:
    return f"{PREFIX}:{host}:slot:{n}"


def _pause_key(host: str) -> str:
    return f"{PREFIX}:{host}:pause"


@contextlib.contextmanager
def slot(conn: redis.Redis, host: str, limit: int, lease_s: float) -> Iterator[None]:
    """Hold one of the host's `limit` slots for the block, waiting for one to be free."""
    token = secrets.token_hex(8)
    lease_ms = max(1, int(lease_s * 1000))
    wait = _POLL_S[0]
    while True:
        taken = next((n for n in range(limit)
                      if conn.set(_slot_key(host, n), token, nx=True, px=lease_ms)), None)
        if taken is not None:
            break
        time.sleep(wait)
        wait = min(wait * 2, _POLL_S[1])
    try:
        yield
    finally:
        _release(conn, _slot_key(host, taken), token)


def _release(conn: redis.Redis, key: str, token: str) -> None:
    # Only our own lease: after an expiry the key may be another worker's.
    with conn.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.get(key) == token.encode():
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
        except redis.WatchError:
            pass


def pause_host(conn: redis.Redis, host: str, seconds: float) -> None:
    """Leave `host` alone for `seconds` (never shortening a longer pause already set)."""
    until = time.time() + seconds
    key = _pause_key(host)
    current = conn.get(key)
    if current is None or float(current) < until:
        conn.set(key, repr(until), px=max(1, int(seconds * 1000)))


def paused_for(conn: redis.Redis, host: str) -> float:
    """Seconds left of the host's pause, 0 when none."""
    value = conn.get(_pause_key(host))
    return max(0.0, float(value) - time.time()) if value is not None else 0.0
