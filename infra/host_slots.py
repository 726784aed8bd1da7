"""Per-host download slots shared by every worker through Redis, per-host pauses, and each
host's allowed concurrency, lowered when it throttles and raised again as it answers.

A slot is one of `limit` keys per host, taken with `SET NX PX`: at most `limit` downloads from
a host are in flight across all processes. Each key expires after its lease (longer than any
download may take), so a killed worker cannot keep a slot. Taking one never waits: a caller
that finds none free does something else first (worker/dispatch.py). `claim` reads the host's
pause and limit and takes a slot in one Lua script (one round trip, atomic), and a slot is
released by another (delete the key only if it still holds our token): per image, two round
trips in all, where each slot tried and each step of the release were one apiece.

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
from redis.commands.core import Script

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


# Lua scripts run by EVALSHA (loaded when Redis lacks them). Made without a client, they hold
# no connection: each call names its own, so they serve every process.
# KEYS: the pause key, the limit key, then the host's slot keys 0..configured-1.
# ARGV: now (seconds), lease (ms), token. Returns {pause, limit, slot number or -1}, the pause
# and limit as stored (false when unset); no slot is taken while the pause lasts.
_CLAIM = Script(None, b"""
local pause = redis.call('GET', KEYS[1])
local limit = redis.call('GET', KEYS[2])
local slots = #KEYS - 2
if pause and tonumber(pause) > tonumber(ARGV[1]) then
  return {pause, limit, -1}
end
local allowed = slots
if limit then
  allowed = math.max(1, math.min(slots, math.floor(tonumber(limit))))
end
for n = 1, allowed do
  if redis.call('SET', KEYS[2 + n], ARGV[3], 'NX', 'PX', ARGV[2]) then
    return {pause, limit, n - 1}
  end
end
return {pause, limit, -1}
""")

# Only our own lease: after an expiry the key may be another worker's.
_RELEASE = Script(None, b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")


class Slot:
    """One slot of a host, held until `release()` (which may be called more than once; the
    first call also calls `on_release`). `slowed`: the host's limit was lowered when the slot
    was taken (a success then raises it again: `speed_up`)."""

    def __init__(self, conn: redis.Redis, key: str, token: str, on_release=None,
                 slowed: bool = True):
        self._conn, self._key, self._token = conn, key, token
        self._on_release = on_release
        self.slowed = slowed

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


def claim(conn: redis.Redis, host: str, configured: int, lease_s: float,
          on_release=None) -> tuple[float, Slot | None]:
    """What a worker does before a download, in one atomic round trip: (seconds left of the
    host's pause, 0 when none; one of the host's first `limit_for` slots, or None when the host
    is paused or all of them are taken). Never waits. `configured`: PER_HOST_CONCURRENCY, the
    limit of a host not slowed down. `on_release`: called once the slot is released (a waiting
    dispatcher's wake-up)."""
    token = secrets.token_hex(8)
    keys = [_pause_key(host), _limit_key(host)] + [_slot_key(host, n) for n in range(configured)]
    now = time.time()
    pause, limit, n = _CLAIM(keys=keys, args=[repr(now), max(1, int(lease_s * 1000)), token],
                             client=conn)
    left = max(0.0, float(pause) - now) if pause is not None else 0.0
    if n < 0:
        return left, None
    return left, Slot(conn, _slot_key(host, n), token, on_release, slowed=limit is not None)


def _release(conn: redis.Redis, key: str, token: str) -> None:
    _RELEASE(keys=[key], args=[token], client=conn)


def pause_host(conn: redis.Redis, host: str, seconds: float) -> None:
    """Leave `host` alone for `seconds` (never shortening a longer pause already set)."""
    until = time.time() + seconds
    key = _pause_key(host)
    current = conn.get(key)
    if current is None or float(current) < until:
        conn.set(key, repr(until), px=max(1, int(seconds * 1000)))


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
