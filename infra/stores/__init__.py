"""The stores the service uses: one implementation of every store interface (interfaces.py),
MongoDB unless another is installed (the embedded default installs SQLite).

    from infra import stores
    stores.batches().get(batch_id, owner)
"""
from __future__ import annotations

import threading

from infra.stores.interfaces import (BatchStore, IdempotencyStore, ProductStore, SourceStore,
                                     Stores, WebhookStore)

_lock = threading.Lock()
_state: dict = {"stores": None}


def use(implementation: Stores | None) -> None:
    """Install the stores to use (SQLite for the embedded default, tests); None: MongoDB."""
    with _lock:
        _state["stores"] = implementation


def current() -> Stores:
    with _lock:
        if _state["stores"] is None:
            from infra.stores.mongo import MongoStores
            _state["stores"] = MongoStores()
        return _state["stores"]


def load_implementation() -> None:
    """Import the module of the stores `current()` will make (MongoDB's, with pymongo, unless
    others are installed) without making them: no client, no connection (a forking worker's
    work-horses then import nothing: worker/__main__.py `preload`)."""
    with _lock:
        if _state["stores"] is None:
            import infra.stores.mongo  # noqa: F401


def batches() -> BatchStore:
    return current().batches


def products() -> ProductStore:
    return current().products


def webhooks() -> WebhookStore:
    return current().webhooks


def idempotency() -> IdempotencyStore:
    return current().idempotency


def sources() -> SourceStore:
    return current().sources
