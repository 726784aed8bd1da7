"""worker/pixel_budget.py: decodes are admitted while their pixels fit, in arrival order."""
from __future__ import annotations

import threading
import time

import pytest

from worker.pixel_budget import PixelBudget


class Holder(threading.Thread):
    """Holds `pixels` of the budget from admission until released."""

    def __init__(self, budget: PixelBudget, pixels: int, order: list):
        super().__init__(daemon=True)
        self.budget, self.pixels, self.order = budget, pixels, order
        self.admitted = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        with self.budget.admit(self.pixels):
            self.order.append(self.pixels)
            self.admitted.set()
            self.release.wait(10)


def wait_for_waiters(budget: PixelBudget, count: int) -> None:
    deadline = time.monotonic() + 5
    while budget.waiting < count:
        assert time.monotonic() < deadline, "nobody is waiting for admission"
        time.sleep(0.001)


def test_a_decode_that_does_not_fit_waits_until_pixels_are_released():
    budget, order = PixelBudget(100), []
    first = Holder(budget, 60, order)
    first.start()
    assert first.admitted.wait(5)
    second = Holder(budget, 60, order)
    second.start()
    wait_for_waiters(budget, 1)
    assert not second.admitted.is_set() and budget.in_flight == 60
    first.release.set()
    assert second.admitted.wait(5)
    second.release.set()
    second.join(5)
    assert budget.peak == 60 and budget.in_flight == 0


def test_decodes_that_fit_together_are_admitted_together():
    budget, order = PixelBudget(100), []
    holders = [Holder(budget, 30, order) for _ in range(3)]
    for holder in holders:
        holder.start()
    assert all(h.admitted.wait(5) for h in holders)
    assert budget.in_flight == 90
    for holder in holders:
        holder.release.set()
        holder.join(5)
    assert budget.peak == 90


def test_an_image_over_the_whole_budget_runs_alone():
    budget, order = PixelBudget(100), []
    small = Holder(budget, 10, order)
    small.start()
    assert small.admitted.wait(5)
    huge = Holder(budget, 500, order)
    huge.start()
    wait_for_waiters(budget, 1)
    small.release.set()
    assert huge.admitted.wait(5)
    later = Holder(budget, 10, order)
    later.start()
    wait_for_waiters(budget, 1)
    assert budget.in_flight == 500
    huge.release.set()
    assert later.admitted.wait(5)
    later.release.set()
    later.join(5)


def test_a_large_image_is_not_overtaken_by_smaller_ones():
    budget, order = PixelBudget(100), []
    running = Holder(budget, 50, order)
    running.start()
    assert running.admitted.wait(5)
    large = Holder(budget, 80, order)
    large.start()
    wait_for_waiters(budget, 1)
    small = Holder(budget, 10, order)  # would fit beside the running one, but came later
    small.start()
    wait_for_waiters(budget, 2)
    running.release.set()
    assert large.admitted.wait(5)
    assert small.admitted.wait(5)
    assert order == [50, 80, 10]
    large.release.set()
    small.release.set()


def test_a_budget_must_hold_at_least_one_pixel():
    with pytest.raises(ValueError):
        PixelBudget(0)
