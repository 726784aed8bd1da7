"""worker/dispatch.py: which image a free thread starts next, so that none waits on a host."""
from __future__ import annotations

import threading
import time

from worker import dispatch
from worker.dispatch import BACKOFF, BUDGET, BUSY, PAUSED, NotNow


def _host(item: str) -> str:
    return item.split("/")[0]


def test_a_busy_host_s_items_are_passed_over_then_put_back_and_the_others_done():
    calls: list[str] = []

    def acquire(item, wake):
        calls.append(item)
        if _host(item) == "busy":
            raise NotNow(dispatch.POLL_S, BUSY)
        return item

    items = ["busy/1", "free/1", "busy/2", "free/2", "free/3"]
    out = dispatch.run(items, acquire, lambda item, held: 1, threads=2, host_of=_host,
                       hold_s=0.3)
    assert out.finished == 3
    assert out.put_back == [("busy/1", BUSY), ("busy/2", BUSY)]
    assert out.wait == dispatch.BUSY_REQUEUE_S
    assert calls[:2] == ["busy/1", "free/1"]  # its slot was not waited for
    # The busy host is tried again each poll, through its first item only.
    assert calls.count("busy/1") >= 2 and "busy/2" not in calls


def test_an_item_in_backoff_frees_its_thread_for_the_next_ones():
    started: list[str] = []
    lock = threading.Lock()

    def work(item, held):
        with lock:
            started.append(item)
            first = started.count(item) == 1
        if item == "a/flaky" and first:
            raise NotNow(0.2, BACKOFF)
        time.sleep(0.02)
        return 1

    out = dispatch.run(["a/flaky", "a/1", "a/2", "a/3"], lambda item, wake: None, work, threads=1,
                       host_of=_host)
    assert out.finished == 4 and out.put_back == [] and out.wait is None
    assert started == ["a/flaky", "a/1", "a/2", "a/3", "a/flaky"]


def test_a_backoff_longer_than_the_hold_is_put_back_with_its_wait():
    def work(item, held):
        raise NotNow(30, BACKOFF)

    out = dispatch.run(["a/1"], lambda item, wake: None, work, threads=1, host_of=_host, hold_s=0.2)
    assert out.finished == 0 and out.put_back == [("a/1", BACKOFF)]
    assert 29 < out.wait <= 30


def test_a_paused_host_s_items_are_all_put_back_at_once():
    tried: list[str] = []

    def acquire(item, wake):
        tried.append(item)
        if _host(item) == "paused":
            raise NotNow(12.5, PAUSED)

    out = dispatch.run(["paused/1", "ok/1", "paused/2", "paused/3"], acquire,
                       lambda item, held: 1, threads=2, host_of=_host)
    assert out.finished == 1
    assert sorted(out.put_back) == [("paused/1", PAUSED), ("paused/2", PAUSED),
                                    ("paused/3", PAUSED)]
    assert out.wait == 12.5
    assert tried.count("paused/2") == 0 and tried.count("paused/3") == 0


def test_a_stopped_batch_starts_nothing_more_and_puts_nothing_back():
    done: list[str] = []
    stop = threading.Event()

    def work(item, held):
        done.append(item)
        stop.set()
        return 1

    out = dispatch.run([f"a/{n}" for n in range(5)], lambda item, wake: None, work, threads=1,
                       host_of=_host, stop=stop.is_set)
    assert done == ["a/0"] and out.finished == 1 and out.put_back == [] and out.wait is None


def test_a_slot_released_wakes_the_dispatcher_for_its_host_s_next_item():
    # One slot; a busy answer says "again in 5 s", but the release comes much sooner.
    free = threading.Lock()
    events: list[tuple[str, str]] = []

    def acquire(item, wake):
        if not free.acquire(blocking=False):
            raise NotNow(5.0, BUSY)
        return wake

    def work(item, wake):
        events.append(("start", item))
        time.sleep(0.05)  # the download
        free.release()
        wake()
        time.sleep(0.3)  # encode and store, the slot already free
        events.append(("end", item))
        return 1

    out = dispatch.run(["h/1", "h/2", "h/3"], acquire, work, threads=3, host_of=_host)
    assert out.finished == 3 and out.put_back == []
    # The next download began while the first image was still being encoded.
    assert events.index(("start", "h/2")) < events.index(("end", "h/1"))
    assert events.index(("start", "h/3")) < events.index(("end", "h/2"))


def test_past_its_deadline_no_item_starts_and_the_rest_is_put_back_to_run_again_at_once():
    def work(item, held):
        time.sleep(0.3)
        return 1

    items = [f"a/{n}" for n in range(6)]
    out = dispatch.run(items, lambda item, wake: None, work, threads=2, host_of=_host,
                       deadline=time.monotonic() + 0.45)
    # Two at a time: started at 0 s and 0.3 s, none after 0.45 s; those in flight finish.
    assert 2 <= out.finished <= 4
    assert out.put_back == [(item, BUDGET) for item in items[out.finished:]]
    assert out.wait == 0


def test_past_its_deadline_an_item_in_backoff_is_put_back_with_what_is_left_of_its_wait():
    def work(item, held):
        if item == "a/flaky":
            raise NotNow(30, BACKOFF)
        time.sleep(0.2)
        return 1

    out = dispatch.run(["a/flaky", "a/1", "a/2"], lambda item, wake: None, work, threads=1,
                       host_of=_host, deadline=time.monotonic() + 0.1)
    assert out.finished == 1  # a/1, started before the deadline
    assert out.put_back == [("a/2", BUDGET), ("a/flaky", BACKOFF)]
    assert out.wait == 0


def test_a_deadline_already_past_still_lets_a_run_finish_something():
    out = dispatch.run(["a/1", "a/2", "a/3"], lambda item, wake: None, lambda item, held: 1,
                       threads=1, host_of=_host, deadline=time.monotonic() - 1)
    assert out.finished >= 1 and out.finished + len(out.put_back) == 3


def test_an_item_that_ends_while_the_loop_looks_away_is_not_missed(monkeypatch):
    class SlowClear(threading.Event):
        def clear(self):  # items end meanwhile: their wake-up is cleared away
            time.sleep(0.02)
            super().clear()

    monkeypatch.setattr(dispatch.threading, "Event", SlowClear)
    # a/2 ends while the loop, woken by a/1, clears its wake-up before looking again.
    seconds = {"a/1": 0.01, "a/2": 0.025}
    started = time.monotonic()
    out = dispatch.run(list(seconds), lambda item, wake: None,
                       lambda item, held: time.sleep(seconds[item]) or 1, threads=2,
                       host_of=_host)
    assert out.finished == 2
    assert time.monotonic() - started < dispatch.WAIT_MAX_S  # none waited for a wake-up lost
