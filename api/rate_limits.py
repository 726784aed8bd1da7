"""Rate limits on calls that make the service do work for others (redelivering a webhook).

Built on `limits` (the library under Flask-Limiter): a fixed window per caller, counted in Redis so
every API process shares it, or in memory in the embedded default (one process). A caller is the
API key's name, or the client address when the API is open. Over the limit: 429
application/problem+json with `Retry-After` (seconds until the window resets).
"""
from __future__ import annotations

import math
import time

from flask import Flask, current_app, request
from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from api.auth import owner
from api.errors import ApiError
from infra.settings import Settings

EXTENSION = "batchpress.rate_limits"


class _Limits:
    def __init__(self, settings: Settings):
        storage = storage_from_string(settings.redis_url) if settings.redis_url \
            else MemoryStorage()
        self.limiter = FixedWindowRateLimiter(storage)
        self.redeliver = parse(settings.redeliver_rate)
        self.redeliver_text = settings.redeliver_rate


def register(app: Flask, settings: Settings) -> None:
    app.extensions[EXTENSION] = _Limits(settings)


def check_redelivery() -> None:
    """Count one redelivery for the caller; raises a 429 ApiError when over REDELIVER_RATE."""
    limits: _Limits = current_app.extensions[EXTENSION]
    caller = owner() or f"addr:{request.remote_addr}"
    if limits.limiter.hit(limits.redeliver, "redeliver", caller):
        return
    reset_at, _remaining = limits.limiter.get_window_stats(limits.redeliver, "redeliver", caller)
    wait = max(1, math.ceil(reset_at - time.time()))
    raise ApiError(429, "Too Many Requests",
                   f"at most {limits.redeliver_text} redeliveries per caller (REDELIVER_RATE); "
                   f"try again in {wait} s", kind="rate-limited",
                   headers={"Retry-After": str(wait)}, retry_after=wait)
