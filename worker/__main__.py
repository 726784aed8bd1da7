"""`python -m worker [QUEUE ...]` and `python -m worker --cron`: the production worker processes
(the Makefile, Procfile and compose run these commands).

- A forking RQ worker (each job in a fresh work-horse process, so a crash or an OOM kill takes
  one job down, never the worker) with RQ's scheduler (retries and webhook backoff wait in it),
  on the given queues or, by default, every queue (`infra.queues.QUEUE_ORDER`), taken in turn.
  SIGTERM: the job in hand is finished, then the worker exits (a chunk job starts no new image
  then: the ones in flight finish and the rest is queued again); a second SIGTERM cuts it off.
- `--cron`: RQ's cron scheduler with `worker/cron_config.py` (the stall sweeper and overdue
  webhook recovery). One per deployment; a second one only adds harmless sweeps.

RQ's worker and cron scheduler quit when Redis goes away under them (a restart, a failover);
here each is started again after RESTART_DELAY_S until it stops because it was asked to.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time

# First: the service's JSON logs and settings warnings, before RQ installs its own handler.
from worker import rq_config  # noqa: F401  isort: skip

import redis
from rq import Worker
from rq.cron import CronScheduler

from infra import jobs, queues, storage, stores
from infra.settings import get_settings
from worker import image_memory
from worker.runner import DEQUEUE_STRATEGY
from worker.stopping import STOPPING

log = logging.getLogger("worker")

RESTART_DELAY_S = 2.0
CRON_CONFIG = "worker.cron_config"


def preload() -> None:
    """Build once, in the worker, what each work-horse would otherwise build again after its
    fork: the jobs' modules (Pillow, requests, the stores: ~0.15 s of CPU), the stores'
    implementation (pymongo, imported on first use: ~0.2 s) and boto3's S3 model (~0.08 s).
    Together that was ~10 ms of CPU per image on chunks of 50. No client or connection is kept:
    those must not cross a fork (infra/per_process.py). Freed image memory is kept mapped for
    the next image (worker/image_memory.py)."""
    for module in jobs.JOB_MODULES:
        importlib.import_module(module)
    stores.load_implementation()
    storage.load_client_models()
    image_memory.keep_image_memory(get_settings().max_pixels_in_flight)


# What the worker sends its work-horse when asked to stop (SIGTERM, Ctrl-C): the chunk job in
# it starts no new image, lets the ones in flight finish and queues the rest again, so a deploy
# waits seconds, not a whole chunk. Its default action is to end the process, so the handler is
# installed before any fork: a work-horse has it from its first instruction.
STOP_HORSE = signal.SIGUSR1


class StoppingWorker(Worker):
    """RQ's forking worker, whose warm stop also tells the work-horse (STOP_HORSE)."""

    def handle_warm_shutdown_request(self):
        super().handle_warm_shutdown_request()
        if self.horse_pid:
            try:
                os.kill(self.horse_pid, STOP_HORSE)
            except ProcessLookupError:  # it ended meanwhile
                pass


_worker_pid = 0  # the worker's own; its work-horses have others


def _stop_taking_images(signum, frame) -> None:
    if os.getpid() != _worker_pid:  # in a work-horse: the worker itself runs no job
        STOPPING.set()


def run_worker(names: list[str]) -> int:
    settings = get_settings()
    preload()
    global _worker_pid
    _worker_pid = os.getpid()
    signal.signal(STOP_HORSE, _stop_taking_images)
    while True:
        worker = StoppingWorker([queues.get_queue(name) for name in names],
                        connection=queues.get_redis(),
                        job_monitoring_interval=settings.job_heartbeat_s,
                        maintenance_interval=settings.rq_maintenance_interval_s)
        try:
            worker.work(with_scheduler=True, logging_level=settings.log_level,
                        dequeue_strategy=DEQUEUE_STRATEGY)  # queues in turn: see runner.py
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.error("worker lost Redis: %s", error)
        # RQ records when SIGTERM/SIGINT asked it to stop; any other return is RQ quitting
        # on an error.
        if worker._shutdown_requested_date is not None:
            return 0
        log.error("the RQ worker quit on an error; starting it again in %.0f s",
                  RESTART_DELAY_S)
        time.sleep(RESTART_DELAY_S)


def run_cron() -> int:
    level = get_settings().log_level
    while True:
        scheduler = CronScheduler(connection=queues.get_redis(), logging_level=level)
        scheduler.load_config_from_file(CRON_CONFIG)
        try:
            scheduler.start()  # returns on SIGTERM/SIGINT
            return 0
        except (redis.ConnectionError, redis.TimeoutError) as error:
            log.error("cron scheduler lost Redis (%s); starting it again in %.0f s", error,
                      RESTART_DELAY_S)
            time.sleep(RESTART_DELAY_S)


def main(argv: list[str]) -> int:
    if argv == ["--cron"]:
        return run_cron()
    names = argv or list(queues.QUEUE_ORDER)
    unknown = [name for name in names if name not in queues.QUEUE_ORDER]
    if unknown:
        print(f"unknown queue(s): {', '.join(unknown)}; the queues are "
              f"{', '.join(queues.QUEUE_ORDER)} (or --cron for the cron scheduler)",
              file=sys.stderr)
        return 2
    return run_worker(names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
