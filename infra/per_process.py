"""Values built on first use in each process: clients, pools and gates that must not cross a fork.

    @per_process
    def redis_client():
        return redis.Redis.from_url(...)

    redis_client()          # built once per process, whatever the threads
    redis_client.install(x) # this value from now on, in this process and the children it forks
    redis_client.reset()    # forget; the next call builds again

Arguments are cached by value (functools.lru_cache, `maxsize` of them, unbounded by default), so a
function of a URL and a timeout keeps one value per pair. A forked child builds its own on first
use: a PyMongo client, a boto3 client, a thread or a lock held by a parent's thread is the
parent's. An installed value is the caller's choice and is kept across a fork.
"""
from __future__ import annotations

import functools
import os
import threading
import weakref
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_UNSET = object()
_instances: weakref.WeakSet[PerProcess] = weakref.WeakSet()


class PerProcess(Generic[T]):
    """A function whose results are built once per process and arguments, under a lock."""

    def __init__(self, build: Callable[..., T], maxsize: int | None = None):
        functools.update_wrapper(self, build)
        self._build, self._maxsize = build, maxsize
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._cache: Callable[..., T] | None = None
        self._installed: object = _UNSET
        _instances.add(self)

    def __call__(self, *args) -> T:
        # Built under the lock: two threads' first calls make one value, never two.
        with self._lock:
            if self._installed is not _UNSET:
                return self._installed  # type: ignore[return-value]
            if self._pid != os.getpid():
                self._cache = functools.lru_cache(maxsize=self._maxsize)(self._build)
                self._pid = os.getpid()
            return self._cache(*args)

    def install(self, value: T) -> None:
        """Return `value` from now on, for any arguments, here and in forked children."""
        with self._lock:
            self._installed = value

    def reset(self) -> None:
        """Forget what was built or installed; the next call builds again."""
        with self._lock:
            self._installed, self._cache, self._pid = _UNSET, None, None

    def _after_fork(self) -> None:
        # Another thread of the parent may have held the lock at the fork: it never will release
        # it here, where that thread does not exist.
        self._lock = threading.Lock()


def per_process(build: Callable[..., T] | None = None, *, maxsize: int | None = None):
    """Decorator: `@per_process` or `@per_process(maxsize=1)` (keep only the latest arguments')."""
    if build is None:
        return lambda function: PerProcess(function, maxsize)
    return PerProcess(build, maxsize)


def _renew_locks() -> None:
    for instance in list(_instances):
        instance._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks)
