"""How many pixels a worker process may hold decoded at once: admission, first come first served.

A decoded image costs memory in proportion to its pixels (14 to 35 bytes a pixel at the peak for
RGBA going to WebP, photo to noise: decoded pixels, their converted copy and libwebp's buffers),
whatever its file size. Encode slots bound how many images are decoded at once, not how big they
are; this budget bounds the sum of their pixels, so a worker's peak memory follows a setting.

- An image is admitted when its pixels fit in what is left of the budget, in arrival order (a
  large image is not overtaken for ever by small ones).
- An image larger than the whole budget is admitted alone, once nothing else is in flight.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import Iterator


class PixelBudget:
    """A counting gate over pixels; `admit(pixels)` holds them for the duration of a block."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("the pixel budget must be at least 1")
        self.limit = limit
        self.in_flight = 0   # pixels admitted and not yet released
        self.peak = 0        # the most pixels ever in flight at once
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()

    @property
    def waiting(self) -> int:
        """How many callers are waiting for admission."""
        with self._cond:
            return len(self._queue)

    def _fits(self, pixels: int) -> bool:
        return self.in_flight == 0 or self.in_flight + pixels <= self.limit

    @contextlib.contextmanager
    def admit(self, pixels: int) -> Iterator[None]:
        pixels = max(0, pixels)
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or not self._fits(pixels):
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too
            self.in_flight += pixels
            self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= pixels
                self._cond.notify_all()
