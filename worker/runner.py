"""Starting an RQ worker on the service's queues (used by `make run`, tests and `python -m worker`)."""
from __future__ import annotations

from rq import SimpleWorker, Worker

from infra import queues


def make_worker(simple: bool = True) -> Worker:
    """A worker on every queue, most urgent first: webhooks, then batches, then images."""
    conn = queues.get_redis()
    worker_class = SimpleWorker if simple else Worker
    return worker_class([queues.get_queue(name) for name in
                         (queues.WEBHOOKS, queues.BATCHES, queues.IMAGES)], connection=conn)


def run_worker(burst: bool = True) -> bool:
    """Work the queues in this process (SimpleWorker: no fork, so in-memory stores are shared)."""
    return make_worker(simple=True).work(burst=burst, with_scheduler=True,
                                         logging_level="WARNING")
