"""infra/batching.py: writes of several threads sent together, at most an interval late."""
from __future__ import annotations

import threading
import time

from infra.batching import Batch


def test_items_of_several_threads_go_together_in_order_and_at_flush():
    sent: list[list[int]] = []
    batch = Batch(sent.append, interval_s=60)
    threads = [threading.Thread(target=batch.add, args=([n],)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch.add([5, 6])
    assert sent == []  # within the interval: held
    batch.flush()
    assert len(sent) == 1 and sorted(sent[0]) == list(range(7)) and sent[0][-2:] == [5, 6]
    batch.flush()
    assert len(sent) == 1  # nothing left: nothing sent


def test_an_add_after_the_interval_sends_what_is_held():
    sent: list[list[str]] = []
    batch = Batch(sent.append, interval_s=0.2)
    batch.add(["a"])
    time.sleep(0.25)
    batch.add(["b"])
    assert sent == [["a", "b"]]
    batch.add(["c"])  # the interval starts again at the send
    assert sent == [["a", "b"]]
