"""Per-host download slots shared by every worker through Redis, per-host pauses, and each
host's allowed concurrency, lowered when it throttles and raised again as it answers.

A slot is one of `limit` keys per host, taken with `SET NX PX`: at most `limit` downloads from
a host are in flight across all processes. Each key expires after its lease (longer than any
download may take), so a killed worker cannot keep a slot. Taking one never waits: a caller
that finds none free does something else first (worker/dispatch.py).

A pause (`pause_host`, set by a 429 or 503 with Retry-After) makes every worker leave that host
alone until it passes. A throttle answer also halves the host's limit (`slow_down`, floor 1,
once per pause however many downloads in flight were throttled); each success then adds
1/limit to it (`speed_up`: +1 per `limit` successes), back to PER_HOST_CONCURRENCY: additive
increase, multiplicative decrease, as TCP does. The lowered limit is forgotten after
SLOWDOWN_TTL_S without a throttle or a success.
"""
from __future__ import annotations

import math
import secrets
import time

import redis

PREFIX = "bp:host"
SLOWDOWN_TTL_S = 600     # a lowered limit left alone this long is forgotten (full speed again)
_UPDATE_TRIES = 5        # optimistic-transaction retries of a limit update under contention


def _slot_key(host: str, n: int) -> str:
    return f"{PREFIX}:{host}:slot:{n}"


def _pause_key(host: str) -> str:
    return f"{PREFIX}:{host}:pause"


def _limit_key(host: str) -> str:
    return f"{PREFIX}:{host}:limit"


def _slowed_key(host: str) -> str:
    return f"{PREFIX}:{host}:slowed"


class Slot:
    """One slot of a host, held until `release()` (which may be called more than once; the
    first call also calls `on_release`)."""

    def __init__(self, conn: redis.Redis, key: str, token: str, on_release=None):
        self._conn, self._key, self._token = conn, key, token
        self._on_release = on_release

    def release(self) -> None:
        if self._token is None:
            return
        token, self._token = self._token, None
        _release(self._conn, self._key, token)
        if self._on_release is not None:
            self._on_release()

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take(conn: redis.Redis, host: str, limit: int, lease_s: float,
         on_release=None) -> Slot | None:
    """One of the host's first `limit` slots, or None at once when all are taken.
    `on_release`: called once the slot is released (a waiting dispatcher's wake-up)."""
    token = secrets.token_hex(8)
    lease_ms = max(1, int(lease_s * 1000))
    for n in range(limit):
        key = _slot_key(host, n)
        if conn.set(key, token, nx=True, px=lease_ms):
            return Slot(conn, key, token, on_release)
    return None


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


def state(conn: redis.Redis, host: str, configured: int) -> tuple[float, int]:
    """(paused_for, limit_for) in one round trip: what a worker reads before taking a slot."""
    pause, limit = conn.mget(_pause_key(host), _limit_key(host))
    left = max(0.0, float(pause) - time.time()) if pause is not None else 0.0
    return left, _limit(limit, configured)


# --------------------------------------------------------------------------- allowed concurrency

def limit_for(conn: redis.Redis, host: str, configured: int) -> int:
    """How many downloads from `host` may be in flight now: `configured`, or less while the
    host is slowed down."""
    return _limit(conn.get(_limit_key(host)), configured)


def _limit(value, configured: int) -> int:
    return configured if value is None else max(1, min(configured, math.floor(float(value))))


def slow_down(conn: redis.Redis, host: str, configured: int, episode_s: float) -> int | None:
    """A throttle answer from `host`: halve its limit (floor 1). The throttles of one episode
    (`episode_s`, the pause it asked for, at least a second) halve it once: the downloads in
    flight when a host starts throttling all get a 429 together. Returns the new limit, or None
    when this episode has halved it already or it is 1 already."""
    if limit_for(conn, host, configured) <= 1:
        return None
    if not conn.set(_slowed_key(host), "1", nx=True, px=max(1000, int(episode_s * 1000))):
        return None
    return _update_limit(conn, host, configured, lambda current: max(1.0, math.floor(current / 2)))


def speed_up(conn: redis.Redis, host: str, configured: int) -> None:
    """A download from `host` succeeded: +1/limit to a lowered limit (one GET when it is not)."""
    if conn.get(_limit_key(host)) is None:
        return
    _update_limit(conn, host, configured,
                  lambda current: round(current + 1 / max(1, math.floor(current)), 6))


def _update_limit(conn: redis.Redis, host: str, configured: int, change) -> int | None:
    """Apply `change` to the host's limit in an optimistic transaction; at `configured` or
    above the key goes (full speed). The new limit, or None if contention won every try."""
    key = _limit_key(host)
    for _ in range(_UPDATE_TRIES):
        with conn.pipeline() as pipe:
            try:
                pipe.watch(key)
                value = pipe.get(key)
                new = change(float(value) if value is not None else float(configured))
                pipe.multi()
                if new >= configured:
                    pipe.delete(key)
                else:
                    pipe.set(key, repr(new), ex=SLOWDOWN_TTL_S)
                pipe.execute()
                return min(configured, math.floor(new))
            except redis.WatchError:
                continue
    return None
