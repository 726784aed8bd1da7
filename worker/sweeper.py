"""The stall sweeper: no batch may hang forever because its jobs vanished from Redis.

A batch that is `queued` or `processing` but has recorded no progress (`updated_at`) for
`STALL_TIMEOUT_S`, and none of whose jobs is still alive in Redis (waiting on its queue, deferred,
scheduled for less than `STALL_TIMEOUT_S` ago, or started by a worker whose heartbeat is fresh),
gets its
missing work enqueued again:

- not parsed yet: the parse job (parsing is idempotent: rows are upserted, images keep state);
- parsed, with pending images: one chunk job per chunk that still has pending images (chunk jobs
  only touch pending images and count each pending -> done change once, so nothing is doubled);
- parsed, nothing pending: the counts are re-derived from the image documents (a crash between
  an image update and its counter update, or mid-retry, leaves them off) and the batch finished.

A batch claimed more than `MAX_STALL_RECOVERIES` times in a row without progress in between is
not re-enqueued again but given up on (`give_up`): unparsed, it fails with an error saying so;
parsed, its pending images fail and it finishes as its counts say.

What loses jobs: a Redis restart without persistence, a flushed or evicted key, a worker killed
(SIGKILL, OOM, lost node) mid-job: its job stays "started" until RQ's maintenance
(`RQ_MAINTENANCE_INTERVAL_S`) cleans it up, but its heartbeat stops, which is what is read here.

Scheduling (see the README section "Batch control"): run RQ's cron scheduler with this
package's config, `python -m worker --cron`, which enqueues `run_sweep` on the `batches`
queue every `SWEEP_INTERVAL_S` seconds. The cron scheduler keeps its schedule in its own
process memory, so it survives a Redis restart (a job that re-enqueues itself would not). Two
sweeps at once are harmless: each stalled batch is claimed with a conditional update, so only
one of them re-enqueues its work.
`python -m worker.sweeper` runs one sweep by hand.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone

from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry

from infra import jobs, queues, stores
from infra.settings import get_settings
from schemas.batch import BatchStatus
from schemas.failures import FailureCode
from schemas.records import FAILED, PROCESSED, BatchRecord
from worker import tasks, webhook_delivery

log = logging.getLogger(__name__)

ALIVE = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


# RQ scores a started job at its last heartbeat + JOB_HEARTBEAT_S + a fixed 60 s, so a killed
# worker's job would look alive for a minute more; the sweeper takes a job whose heartbeat is
# two JOB_HEARTBEAT_S old for dead instead.
RQ_HEARTBEAT_GRACE_S = 60


def _running_job_ids(conn, at: float) -> set[str]:
    """Jobs in a StartedJobRegistry whose worker wrote a heartbeat lately."""
    running: set[str] = set()
    fresh_for = get_settings().job_heartbeat_s - RQ_HEARTBEAT_GRACE_S
    for name in (queues.BATCHES, queues.IMAGES):
        key = StartedJobRegistry(name, connection=conn).key
        for member, expires in conn.zrange(key, 0, -1, withscores=True):
            if expires + fresh_for > at:
                running.add(member.decode().rsplit(":", 1)[0])
    return running


def _overdue_scheduled_ids(conn, at: float) -> set[str]:
    """Jobs scheduled (an RQ retry) for more than STALL_TIMEOUT_S ago and still not moved to
    their queue: no scheduler is running (the worker holding RQ's scheduler lock was killed,
    and the lock outlives it by a minute)."""
    cutoff = at - get_settings().stall_timeout_s
    overdue: set[str] = set()
    for name in (queues.BATCHES, queues.IMAGES):
        key = ScheduledJobRegistry(name, connection=conn).key
        overdue.update(member.decode() for member in conn.zrangebyscore(key, 0, cutoff))
    return overdue


def live_jobs(batch: BatchRecord, conn=None, running: set[str] | None = None,
              overdue: set[str] | None = None) -> list[str]:
    """The batch's jobs still alive in Redis (waiting, scheduled and not overdue, or running
    with a fresh heartbeat)."""
    conn = conn or queues.get_redis()
    at = datetime.now(timezone.utc).timestamp()
    if running is None:
        running = _running_job_ids(conn, at)
    if overdue is None:
        overdue = _overdue_scheduled_ids(conn, at)
    ids = jobs.batch_job_ids(batch)
    alive = []
    for job_id, job in zip(ids, Job.fetch_many(ids, connection=conn)):
        if job is None:
            continue
        status = job.get_status(refresh=False)
        if status == JobStatus.SCHEDULED and job_id in overdue:
            continue
        if status == JobStatus.QUEUED and not _in_queue(conn, job):
            continue  # taken off its queue by a worker that died before starting it
        if status in ALIVE or (status == JobStatus.STARTED and job_id in running):
            alive.append(job_id)
    return alive


def _in_queue(conn, job: Job) -> bool:
    """Whether a job marked queued is really waiting on its queue. A worker that loses Redis
    between taking a job and starting it (a Redis restart) leaves it marked queued on no
    queue; RQ's maintenance finds it only much later."""
    return conn.lpos(f"rq:queue:{job.origin}", job.id) is not None


def _unschedule(conn, job_ids: set[str]) -> None:
    """Take overdue jobs out of RQ's scheduled registries: the sweeper enqueues them itself."""
    if job_ids:
        for name in (queues.BATCHES, queues.IMAGES):
            conn.zrem(ScheduledJobRegistry(name, connection=conn).key, *job_ids)


def recover(batch: BatchRecord) -> dict:
    """Re-enqueue whatever work of this (claimed) batch is missing; returns what was done."""
    batch_id = batch.id
    if not batch.parsed:
        jobs.enqueue_parse(batch_id)
        return {"batch_id": batch_id, "action": "parse"}
    pending = stores.products().pending_chunks(batch_id)
    if pending:
        jobs.enqueue_chunks(batch_id, pending)
        return {"batch_id": batch_id, "action": "chunks", "chunks": pending}
    _recount_and_finish(batch_id)
    return {"batch_id": batch_id, "action": "finish", "status": _status(batch_id)}


def recount_if_alone(batch_id: str, own_job_id: str | None) -> BatchRecord | None:
    """The batch finished with its counts re-derived from its images, when they are short
    although nothing is left to do and no other job of the batch is alive: a worker killed
    before it added its images' results (chunk runs add them about once a second) lost them.
    Called by a chunk job whose try_finish did not finish the batch, so that such a batch
    finishes now rather than after STALL_TIMEOUT_S. Only the batch read, and one indexed read
    of its images, unless it really is stuck; returns the batch if this call finished it."""
    batch = stores.batches().get(batch_id, any_owner=True)
    if (batch is None or batch.status != BatchStatus.PROCESSING or not batch.parsed
            or batch.done_slots >= batch.images_total
            or stores.products().any_pending(batch_id)):
        return None
    # A live job may hold results not added yet: recounting under it would count them twice.
    if [job for job in live_jobs(batch) if job != own_job_id]:
        return None
    return _recount(batch_id)


def _status(batch_id: str) -> str | None:
    status = stores.batches().status_of(batch_id)
    return status.value if status else None


def _recount_and_finish(batch_id: str) -> None:
    tasks.finish(_recount(batch_id))


def _recount(batch_id: str) -> BatchRecord | None:
    """Counts re-derived from the images, then try_finish."""
    counts = stores.products().count_slots(batch_id)
    stores.batches().set_image_counts(batch_id, processed=counts.get(PROCESSED, 0),
                                      failed=counts.get(FAILED, 0),
                                      reused=counts.get("reused", 0))
    return stores.batches().try_finish(batch_id)


def give_up(batch: BatchRecord, recoveries: int) -> dict:
    """End a (claimed) batch whose work was re-enqueued `recoveries` times in a row without any
    progress: workers keep dying on it. Unparsed, it fails; parsed, its pending images fail
    (what was done stays done) and it finishes as its counts say."""
    batch_id = batch.id
    why = (f"gave up after {recoveries} recoveries: its jobs kept stalling (workers lost or "
           "killed while processing it)")
    if not batch.parsed:
        tasks.finish(stores.batches().fail(batch_id, f"the file could not be processed: {why}"))
    else:
        stores.products().fail_pending(batch_id, why, FailureCode.STALLED)
        _recount_and_finish(batch_id)
    return {"batch_id": batch_id, "action": "gave_up", "status": _status(batch_id)}


def sweep(now: datetime | None = None) -> list[dict]:
    """One pass over stalled batches; returns one entry per batch whose work was re-enqueued."""
    settings = get_settings()
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(seconds=settings.stall_timeout_s)
    conn = queues.get_redis()
    at = datetime.now(timezone.utc).timestamp()
    running = _running_job_ids(conn, at)
    overdue = _overdue_scheduled_ids(conn, at)
    done = []
    for batch in stores.batches().stalled(cutoff, limit=settings.sweep_limit):
        alive = live_jobs(batch, conn, running, overdue)
        if alive:
            log.debug("stalled batch still has live jobs", extra={"batch_id": batch.id})
            continue
        claimed = stores.batches().claim_stalled(batch)
        if claimed is None:
            continue  # it moved (or another sweep took it) since it was read
        _unschedule(conn, overdue & set(jobs.batch_job_ids(claimed)))
        try:
            if claimed.sweeps > settings.max_stall_recoveries:
                outcome = give_up(claimed, settings.max_stall_recoveries)
            else:
                outcome = recover(claimed)
        except Exception:  # noqa: BLE001 - one batch must not stop the sweep
            log.exception("could not recover stalled batch", extra={"batch_id": batch.id})
            continue
        if outcome["action"] == "gave_up":
            log.error("gave up on a batch whose work kept stalling",
                      extra={"batch_id": batch.id, "status": outcome["status"]})
            done.append(outcome)
            continue
        log.warning("re-enqueued the work of a stalled batch",
                    extra={"batch_id": batch.id, "action": outcome["action"]})
        done.append(outcome)
    return done


def resume_unfinished() -> list[dict]:
    """Sweep every queued or processing batch now, not after STALL_TIMEOUT_S: for a process
    whose queues start empty (the embedded default's in-process Redis), where a batch left
    unfinished by the previous run has lost all its jobs."""
    ahead = timedelta(seconds=get_settings().stall_timeout_s)
    return sweep(datetime.now(timezone.utc) + ahead)


def run_sweep() -> dict:
    """The RQ job the cron scheduler enqueues."""
    recovered = sweep()
    return {"recovered": recovered}


def start_thread(stop: threading.Event, interval: float | None = None) -> threading.Thread:
    """Sweep from a thread every SWEEP_INTERVAL_S (for a single-process run, e.g. `make run`)."""
    every = interval or get_settings().sweep_interval_s

    def loop() -> None:
        while not stop.wait(every):
            try:
                sweep()
                webhook_delivery.recover_overdue()
            except Exception:  # noqa: BLE001 - Redis or MongoDB down: try again next time
                log.exception("stall sweep failed")

    thread = threading.Thread(target=loop, name="sweeper", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":  # pragma: no cover - manual operation
    import json
    logging.basicConfig(level="INFO")
    print(json.dumps(sweep(), default=str, indent=2))
