"""infra/per_process.py: one value per process, built once across threads, rebuilt after a fork."""
from __future__ import annotations

import json
import os
import signal
import threading

from infra.per_process import per_process
from tests.test_stores import race


def _in_child(probe) -> dict:
    """Fork; the child runs `probe()` and sends its JSON back (and dies after 5 s if stuck)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            signal.alarm(5)
            os.write(write_end, json.dumps(probe()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer, "the child answered nothing (stuck or crashed)"
    return json.loads(answer)


def test_first_use_from_many_threads_builds_one_value():
    threads_n = 8
    announced = threading.Semaphore(0)
    builds = []

    @per_process
    def value():
        builds.append(threading.get_ident())
        for _ in range(threads_n - 1):  # stay inside until every other thread is calling too
            announced.acquire(timeout=2)
        return object()

    def call():
        announced.release()
        return value()

    results = race(threads_n, call)
    assert len(builds) == 1
    assert len(results) == threads_n and all(result is results[0] for result in results)


def test_a_forked_child_builds_its_own_and_the_parent_keeps_its_own():
    @per_process
    def value():
        return {"built_by": os.getpid(), "token": id(object())}

    mine = value()
    child = _in_child(lambda: {"pid": os.getpid(), "value": value(), "again": value()})
    assert child["value"]["built_by"] == child["pid"] != os.getpid()
    assert child["again"] == child["value"]
    assert value() is mine and mine["built_by"] == os.getpid()


def test_a_child_forked_while_another_thread_builds_is_not_stuck_on_its_lock():
    inside, release = threading.Event(), threading.Event()

    @per_process
    def value():
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            release.wait(5)
        return os.getpid()

    builder = threading.Thread(target=value)
    builder.start()
    assert inside.wait(5)
    try:
        child = _in_child(lambda: {"pid": os.getpid(), "value": value()})
    finally:
        release.set()
        builder.join(5)
    assert child["value"] == child["pid"]


def test_an_installed_value_is_kept_across_a_fork_until_reset():
    @per_process
    def value():
        return ("built", os.getpid())

    value.install(["installed"])
    assert value() == ["installed"]
    assert _in_child(lambda: value()) == ["installed"]
    value.reset()
    assert value() == ("built", os.getpid())


def test_one_value_per_argument_and_maxsize_keeps_the_latest():
    builds = []

    @per_process(maxsize=1)
    def gate(limit):
        builds.append(limit)
        return [limit]

    first = gate(10)
    assert gate(10) is first
    assert gate(20) == [20]
    assert gate(10) is not first and builds == [10, 20, 10]
