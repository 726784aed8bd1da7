"""Starting an in-process RQ worker on the service's queues (`make run`'s embedded worker, tests).

Production workers are `python -m worker` (worker/__main__.py): forking, one per process."""
from __future__ import annotations

import os
import threading
from datetime import timedelta

from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty
from rq.utils import now

from infra import queues
from infra.settings import get_settings
from worker.stopping import STOPPING

QUEUE_ORDER = queues.QUEUE_ORDER
# The image work, without webhooks: a worker that also sent webhooks could be held by slow
# receivers (up to WEBHOOK_TIMEOUT_S an attempt) while batches wait, so webhooks get their own.
IMAGE_QUEUES = (queues.BATCHES, queues.IMAGES)
WEBHOOK_QUEUES = (queues.WEBHOOKS,)
# A worker serving every queue takes them in turn (RQ's round robin), not webhooks first: each
# attempt ends by WEBHOOK_TIMEOUT_S, so slow receivers get at most every other job while image
# work waits. The production workers (`python -m worker`) use it too.
DEQUEUE_STRATEGY = "round_robin"


def make_worker(simple: bool = True, names: tuple[str, ...] = QUEUE_ORDER,
                service: bool = False) -> Worker:
    """A worker on `names` (SimpleWorker: no fork, so in-memory stores are shared; `service`:
    `make run`'s main worker)."""
    worker_class = _ServiceWorker if service else SimpleWorker if simple else Worker
    return worker_class([queues.get_queue(name) for name in names],
                        connection=queues.get_redis(),
                        job_monitoring_interval=get_settings().job_heartbeat_s)


class _ThreadWorker(SimpleWorker):
    """A SimpleWorker that runs in a thread other than the main one: signal handlers can only
    be installed by the main thread, and job timeouts use a timer instead of SIGALRM. Once the
    process is stopping (worker/stopping.py, set by `make run`'s main worker) it runs no
    more jobs: the one it took is put back on its queue, first, and it ends."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self):
        pass

    def execute_job(self, job, queue):
        if STOPPING.is_set():
            queue.enqueue_job(job, at_front=True)
            raise StopRequested()
        return super().execute_job(job, queue)


class _ServiceWorker(SimpleWorker):
    """`make run`'s main worker. A first Ctrl-C (or SIGTERM) stops the work of the process:
    chunk jobs start no more images (worker/stopping.py: what is left is queued again) and
    the process ends once the images in flight are done, which for one on a server that does
    not answer is DOWNLOAD_TIMEOUT_S (a parse job reads on to the end of its file). A second one
    ends the process at once, where RQ would raise SystemExit into the interpreter's exit (it
    waits for those images' threads); `before_exit` (the scheduler's locks) runs first."""

    before_exit = staticmethod(lambda: None)

    def request_stop(self, signum, frame):
        STOPPING.set()
        print("Stopping: the images in flight finish first (at most "
              f"DOWNLOAD_TIMEOUT_S={get_settings().download_timeout_s:g} s) and no new one "
              "starts; a second Ctrl-C or SIGTERM stops at once", flush=True)
        super().request_stop(signum, frame)

    def request_force_stop(self, signum, frame):
        if now() - self._shutdown_requested_date < timedelta(seconds=1):
            return  # one Ctrl-C delivered twice (RQ's rule too)
        print("Stopped at once: unfinished work is taken up again at the next start (on real "
              "services, by the stall sweeper)", flush=True)
        try:  # what RQ's own exit would have done: other workers and schedulers go on at once
            self.before_exit()
            self.register_death()
        finally:
            os._exit(128 + signum)


def start_webhook_worker(*, with_scheduler: bool,
                         names: tuple[str, ...] = WEBHOOK_QUEUES) -> threading.Thread:
    """Work the webhook queue in a thread of its own until the process ends (`make run`).
    `with_scheduler`: run RQ's scheduler for it (retries waiting in Redis), unless the
    in-process scheduler thread does."""
    worker = _ThreadWorker([queues.get_queue(name) for name in names],
                           connection=queues.get_redis())
    thread = threading.Thread(
        target=worker.work, kwargs={"with_scheduler": with_scheduler, "logging_level": "WARNING"},
        name="webhook-worker", daemon=True)
    thread.start()
    return thread


def start_image_worker() -> threading.Thread:
    """Work the image queue in a thread of its own (`make run`): while the main worker reads a
    large file, the chunks it has queued so far are processed meanwhile."""
    worker = _ThreadWorker([queues.get_queue(queues.IMAGES)], connection=queues.get_redis())
    thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"},
                              name="image-worker", daemon=True)
    thread.start()
    return thread


def start_scheduler_thread(stop: threading.Event, interval: float = 1.0, *,
                           locked: bool = False) -> threading.Thread:
    """Move due scheduled jobs (retries, webhook backoff) onto their queues from a thread.

    RQ's own scheduler runs in a forked process, which cannot see an in-memory Redis and, in
    `make run` on real services, outlives a SIGTERM sent to the service's PID; this does the
    same work in-process. `locked`: take RQ's per-queue scheduler locks first (a real Redis,
    where `python -m worker` processes may run schedulers too), and move jobs only for the
    queues it holds.
    """
    scheduler = RQScheduler(list(QUEUE_ORDER), connection=queues.get_redis())
    if not locked:
        scheduler.prepare_registries(list(QUEUE_ORDER))

    def loop() -> None:
        while not stop.wait(interval):
            if locked:
                scheduler.acquire_locks()  # takes free locks and refreshes its own
            scheduler.enqueue_scheduled_jobs()
        if locked:
            scheduler.release_locks()

    thread = threading.Thread(target=loop, name="scheduler", daemon=True)
    thread.start()
    return thread


def run_worker(*, burst: bool = False, in_process_scheduler: bool = False,
               scheduler_locks: bool = False, names: tuple[str, ...] = QUEUE_ORDER,
               service: bool = False) -> bool:
    """Work the queues `names` in this thread until stopped (or, with burst, until they are
    empty). `in_process_scheduler`: move scheduled jobs from a thread of this process (taking
    RQ's scheduler locks with `scheduler_locks`) instead of RQ's forked scheduler. `service`:
    the main thread of `make run` (_ServiceWorker's stops)."""
    worker = make_worker(simple=True, names=names, service=service)
    if not in_process_scheduler:
        return worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
    stop = threading.Event()
    scheduler = start_scheduler_thread(stop, locked=scheduler_locks)

    def stop_scheduler() -> None:  # it gives its locks back as it ends
        stop.set()
        scheduler.join(timeout=2)
    worker.before_exit = stop_scheduler
    try:
        return worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        stop.set()
