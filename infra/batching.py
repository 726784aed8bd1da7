"""Writes of several threads gathered and sent together: at most one send an interval, and
whatever is left at `flush()` (a chunk job's end). A chunk of quick images (re-imports) then
pays a round trip or so a second for them instead of one per image."""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class Batch(Generic[T]):
    """Items added by any thread, handed to `send` (a list, in the order added) when
    `interval_s` has passed since the last send, and at `flush()`. What is sent is never more
    than about `interval_s` behind; what a killed process held is lost."""

    def __init__(self, send: Callable[[list[T]], None], interval_s: float = 1.0):
        self._send, self.interval_s = send, interval_s
        self._lock = threading.Lock()
        self._items: list[T] = []
        self._sent = time.monotonic()

    def add(self, items: Iterable[T]) -> None:
        with self._lock:
            self._items.extend(items)
            if time.monotonic() - self._sent < self.interval_s:
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._sent = time.monotonic()
        if items:
            self._send(items)
