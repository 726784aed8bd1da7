"""Starting an RQ worker on the service's queues (used by `make run`, tests and `python -m worker`)."""
from __future__ import annotations

import threading

from rq import SimpleWorker, Worker
from rq.scheduler import RQScheduler

from infra import queues

# Most urgent first: webhooks, then new batches, then image chunks.
QUEUE_ORDER = (queues.WEBHOOKS, queues.BATCHES, queues.IMAGES)


def make_worker(simple: bool = True) -> Worker:
    """A worker on every queue (SimpleWorker: no fork, so in-memory stores are shared)."""
    worker_class = SimpleWorker if simple else Worker
    return worker_class([queues.get_queue(name) for name in QUEUE_ORDER],
                        connection=queues.get_redis())


def start_scheduler_thread(stop: threading.Event, interval: float = 1.0) -> threading.Thread:
    """Move due scheduled jobs (retries, webhook backoff) onto their queues from a thread.

    RQ's own scheduler runs in a forked process, which cannot see an in-memory Redis; this
    does the same work in-process for the embedded default.
    """
    scheduler = RQScheduler(list(QUEUE_ORDER), connection=queues.get_redis())
    scheduler.prepare_registries(list(QUEUE_ORDER))

    def loop() -> None:
        while not stop.wait(interval):
            scheduler.enqueue_scheduled_jobs()

    thread = threading.Thread(target=loop, name="scheduler", daemon=True)
    thread.start()
    return thread


def run_worker(*, burst: bool = False, in_process_scheduler: bool = False) -> bool:
    """Work the queues in this thread until stopped (or, with burst, until they are empty)."""
    worker = make_worker(simple=True)
    if not in_process_scheduler:
        return worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
    stop = threading.Event()
    start_scheduler_thread(stop)
    try:
        return worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        stop.set()
