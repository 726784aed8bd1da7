"""Which image of a chunk a free pool thread starts next, so that no thread waits on a host.

The chunk job's own thread hands images, in order, to a pool of `threads` threads, each with its
host's download slot already taken (`acquire`). An image that cannot go now raises NotNow:

- `BUSY` (from `acquire`): every slot of its host is taken. Its host's images are skipped for
  POLL_S, or until `wake` is called (a slot of ours released), and the other hosts' images start
  meanwhile, so a chunk mixing a saturated CDN with other hosts keeps every thread working.
- `BACKOFF` (from `work`, after a connection failure or a 5xx): the image is tried again after
  its wait; the thread that ran it is free at once.
- `PAUSED` (from `acquire`): its host asked everyone to wait (429/503 Retry-After); the image
  and the rest of that host's images are put back at once.

Past the run's `deadline` (the chunk job's time budget) no image starts: those not started are
put back (`BUDGET`, no wait) once the ones in flight end, and the chunk runs again at once, so
that a chunk of slow images never reaches its job timeout.

Only the chunk job's thread ever waits: while some of its images are in flight (their answers
come anyway), or for at most HOLD_S when none is. Past that, and for waits longer than HOLD_S,
the images left are put back (still pending, no attempt counted) and `Outcome.wait` says when
the soonest of them can go: the caller queues the chunk again for then, and the worker takes
other work meanwhile.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")
S = TypeVar("S")

BUSY, BACKOFF, PAUSED, BUDGET = "host_busy", "retry_backoff", "host_paused", "chunk_budget"
POLL_S = 0.1            # how soon a busy host's slots are tried again
HOLD_S = 2.0            # longest the chunk's thread waits with none of its images in flight
BUSY_REQUEUE_S = 1.0    # when a chunk put back for a busy host runs again
WAIT_MAX_S = 1.0        # longest wait for an item to end (each ending wakes it sooner)


class NotNow(Exception):
    """The image cannot go on now: try it again in `seconds` (`reason`: BUSY, BACKOFF, PAUSED).
    Nothing about the image has been counted when this is raised."""

    def __init__(self, seconds: float, reason: str):
        super().__init__(f"{reason}: again in {seconds:.2f} s")
        self.seconds = max(0.0, seconds)
        self.reason = reason


@dataclass
class Outcome(Generic[T]):
    finished: int = 0
    put_back: list[tuple[T, str]] = field(default_factory=list)  # (image, reason)
    wait: float | None = None  # seconds until the soonest image put back may go

    def _put_back(self, item: T, reason: str, seconds: float) -> None:
        self.put_back.append((item, reason))
        self.wait = seconds if self.wait is None else min(self.wait, seconds)


@dataclass
class _Entry(Generic[T]):
    item: T
    host: Hashable        # host_of(item), worked out once: the loop reads it at every wake
    at: float = 0.0       # not before (monotonic)
    reason: str = BUSY    # why it waits, if it does


def run(items: list[T], acquire: Callable[[T, Callable[[], None]], S],
        work: Callable[[T, S], int], *, threads: int, host_of: Callable[[T], Hashable],
        stop: Callable[[], bool] = lambda: False, hold_s: float = HOLD_S,
        deadline: float | None = None, name: str = "chunk") -> Outcome[T]:
    """`work(item, acquire(item, wake))` for every item on `threads` threads, as described
    above; `work` returns how many items it finished and owns what `acquire` gave it; `wake()`
    (any thread) says a busy host may have a free slot now; `deadline` (time.monotonic()): when
    to stop starting items. Exceptions other than NotNow propagate (after the items in flight
    end)."""
    queue = [_Entry(item, host_of(item)) for item in items]
    busy_until: dict[Hashable, float] = {}
    paused: dict[Hashable, float] = {}
    running: dict[Future, _Entry[T]] = {}
    out: Outcome[T] = Outcome()
    idle_since: float | None = None
    woken = threading.Event()  # an item ended, or a slot was released
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        while queue or running:
            woken.clear()  # before looking: whatever happens from now on wakes the wait below
            # After the clear: an item ending from now on sets `woken`, one ended before is
            # collected here, so no ending is missed by the wait.
            for future in [f for f in running if f.done()]:
                entry = running.pop(future)
                try:
                    out.finished += future.result()
                except NotNow as later:  # BACKOFF: the thread is free, the image waits here
                    entry.at, entry.reason = time.monotonic() + later.seconds, later.reason
                    queue.append(entry)
            if not queue and not running:
                break
            if stop():
                queue.clear()  # a stopped batch: nothing more starts, nothing is put back
            now = time.monotonic()
            # The chunk's time is up: the rest runs in its next job (once this one has started
            # something, so that each job gets on however short the budget).
            if deadline is not None and now >= deadline and queue and (running or out.finished):
                for entry in queue:  # one in backoff keeps its reason and what is left of it
                    waiting = entry.at > now
                    out._put_back(entry.item, entry.reason if waiting else BUDGET,
                                  entry.at - now if waiting else 0.0)
                queue.clear()
            _start(queue, running, pool, acquire, work, threads, busy_until, paused, out, now,
                   woken)
            if not queue and not running:
                break
            # With every thread busy nothing can start before one ends (which wakes the wait):
            # the queue is not looked through again.
            full = len(running) >= threads
            soonest = now if full else min(
                (max(e.at, busy_until.get(e.host, 0.0)) for e in queue), default=now)
            if running:
                idle_since = None
            else:
                idle_since = now if idle_since is None else idle_since
                if soonest - now > hold_s or now - idle_since >= hold_s:
                    for entry in queue:
                        out._put_back(entry.item, entry.reason,
                                      max(entry.at - now, BUSY_REQUEUE_S if entry.reason == BUSY
                                          else 0.0))
                    break
            timeout = min(max(soonest - now, 0.005), POLL_S) if queue and not full else WAIT_MAX_S
            if woken.wait(timeout):
                busy_until.clear()  # a slot may be free: try the busy hosts again at once
    return out


def _start(queue, running, pool, acquire, work, threads, busy_until, paused, out, now,
           woken: threading.Event) -> None:
    """Start the queue's images that can go, in order, while threads are free."""
    index = 0
    while index < len(queue) and len(running) < threads:
        entry = queue[index]
        host = entry.host
        if host in paused:
            out._put_back(entry.item, PAUSED, paused[host])
            del queue[index]
            continue
        if entry.at > now or busy_until.get(host, 0.0) > now:
            index += 1
            continue
        try:
            held = acquire(entry.item, woken.set)
        except NotNow as later:
            if later.reason == PAUSED:
                paused[host] = later.seconds
                continue  # put back on the next pass of the loop, with the host's other images
            busy_until[host] = now + later.seconds
            entry.reason = later.reason
            index += 1
            continue
        del queue[index]
        future = pool.submit(work, entry.item, held)
        future.add_done_callback(lambda _: woken.set())
        running[future] = entry
