"""Putting work on the RQ queues: every job's id, options and enqueue call, in one place.

Jobs are named by their dotted path, so the API puts work on the queues without importing the
worker's code: data flows api -> queue -> worker -> stores. Job ids are deterministic, so a
second enqueue of the same work is recognisable (and cancel or the sweeper can find it).
"""
from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from redis.exceptions import RedisError
from rq import Callback, Retry
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from infra import logging_setup, queues
from infra.settings import get_settings

PARSE_BATCH = "worker.tasks.parse_batch"
PARSE_FAILED = "worker.tasks.parse_failed"
PROCESS_CHUNK = "worker.tasks.process_chunk"
ANNOUNCE = "worker.tasks.announce"
WEBHOOK_ATTEMPT = "worker.webhook_delivery.attempt"
WEBHOOK_REDELIVER = "worker.webhook_delivery.redeliver"
# The modules those jobs live in: a forking worker imports them once, before its first fork.
JOB_MODULES = tuple(sorted({path.rpartition(".")[0] for path in (
    PARSE_BATCH, PARSE_FAILED, PROCESS_CHUNK, ANNOUNCE, WEBHOOK_ATTEMPT, WEBHOOK_REDELIVER)}))

WEBHOOK_LEASE_MARGIN_S = 30      # how long past its timeout a webhook attempt may run


def parse_job_id(batch_id: str) -> str:
    return f"{batch_id}-parse"


def chunk_job_id(batch_id: str, chunk: int) -> str:
    return f"{batch_id}-chunk-{chunk}"


def later_job_ids(batch_id: str, chunk: int) -> tuple[str, str]:
    """The two ids a chunk job queued again for later takes in turn (one may be running)."""
    return f"{chunk_job_id(batch_id, chunk)}-later-a", f"{chunk_job_id(batch_id, chunk)}-later-b"


def batch_job_ids(batch) -> list[str]:
    """Every job id a batch (a BatchRecord) can have."""
    ids = [parse_job_id(batch.id)]
    for n in range(batch.chunks):
        ids += [chunk_job_id(batch.id, n), *later_job_ids(batch.id, n)]
    return ids


def _retry() -> Retry:
    delays = get_settings().job_retry_delays  # JOB_RETRY_SCHEDULE
    return Retry(max=len(delays), interval=list(delays))


def enqueue_parse(batch_id: str):
    """Put a batch's parse job on the queue (the upload's last step)."""
    return queues.get_queue(queues.BATCHES).enqueue(
        PARSE_BATCH, batch_id, job_id=parse_job_id(batch_id),
        job_timeout=get_settings().job_timeout_s, result_ttl=3600, failure_ttl=7 * 86400,
        retry=_retry(), on_failure=Callback(PARSE_FAILED, timeout=60),
        meta={"request_id": logging_setup.request_id_var.get()},  # the upload's, in job logs
    )


def enqueue_chunks(batch_id: str, chunk_numbers, *, skip_existing: bool = False) -> None:
    """The batch's chunk jobs, 500 to a Redis pipeline; with `skip_existing`, none whose job is
    still in Redis (queued, running or kept as finished): enqueuing the same id again would
    run it twice."""
    settings = get_settings()
    queue = queues.get_queue(queues.IMAGES)
    chunk_numbers = list(chunk_numbers)
    if skip_existing and chunk_numbers:
        pipe = queue.connection.pipeline(transaction=False)
        for n in chunk_numbers:
            pipe.exists(Job.key_for(chunk_job_id(batch_id, n)))
        chunk_numbers = [n for n, found in zip(chunk_numbers, pipe.execute()) if not found]
    jobs = [queue.prepare_data(
        PROCESS_CHUNK, args=(batch_id, n), job_id=chunk_job_id(batch_id, n),
        timeout=settings.job_timeout_s, result_ttl=600, failure_ttl=7 * 86400, retry=_retry(),
    ) for n in chunk_numbers]
    for start in range(0, len(jobs), 500):
        queue.enqueue_many(jobs[start:start + 500])


def enqueue_chunk_later(batch_id: str, chunk: int, seconds: float | None, *,
                        current_job_id: str | None = None) -> None:
    """Run a chunk job again in `seconds` (RQ's scheduler), for images a server asked to wait,
    or at once with None (on the queue, for whichever worker is free: the one stopping takes
    no more); under an id other than the running job's."""
    first, second = later_job_ids(batch_id, chunk)
    job_id = second if current_job_id == first else first
    settings = get_settings()
    queue = queues.get_queue(queues.IMAGES)
    options = dict(job_id=job_id, job_timeout=settings.job_timeout_s, result_ttl=600,
                   failure_ttl=7 * 86400, retry=_retry())
    if seconds is None:
        queue.enqueue(PROCESS_CHUNK, batch_id, chunk, **options)
    else:
        at = datetime.now(timezone.utc) + timedelta(seconds=max(seconds, 0.0))
        if at.microsecond:  # RQ keeps whole seconds, cutting the rest: never run before the wait
            at = at.replace(microsecond=0) + timedelta(seconds=1)
        queue.enqueue_at(at, PROCESS_CHUNK, batch_id, chunk, **options)
    # The id's earlier run may still be kept (result_ttl), and saving over its key keeps that
    # key's expiry: the job could vanish before it runs. A queued job never expires.
    queue.connection.persist(Job.key_for(job_id))


def enqueue_announce(batch_id: str) -> None:
    """Have a worker announce a batch the API itself finished (a cancel): webhooks, metrics."""
    queues.get_queue(queues.WEBHOOKS).enqueue(
        ANNOUNCE, batch_id, job_id=f"{batch_id}-announce-{secrets.token_hex(4)}",
        result_ttl=600, failure_ttl=7 * 86400, retry=_retry())


def drop_queued_jobs(batch) -> int:
    """Cancel the batch's jobs that have not started; returns how many. Not fatal when Redis is
    down: every job checks the batch status first and skips a batch that is not running."""
    dropped = 0
    try:
        for job in Job.fetch_many(batch_job_ids(batch), connection=queues.get_redis()):
            if job is None or job.get_status(refresh=False) not in (
                    JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                continue
            try:
                job.cancel()
                dropped += 1
            except InvalidJobOperation:
                pass
    except RedisError:
        return dropped
    return dropped


def _webhook_options(job_id: str) -> dict:
    return {"job_id": job_id,
            "job_timeout": int(get_settings().webhook_timeout_s * 2) + WEBHOOK_LEASE_MARGIN_S,
            "result_ttl": 600, "failure_ttl": 7 * 86400}


def enqueue_webhook_attempt(delivery_id: str, number: int, at: datetime | None = None) -> None:
    """Queue attempt `number` of a delivery now, or at `at` through RQ's scheduler."""
    queue = queues.get_queue(queues.WEBHOOKS)
    options = _webhook_options(f"webhook-{delivery_id}-{number}")
    if at is None or at <= datetime.now(timezone.utc):
        queue.enqueue(WEBHOOK_ATTEMPT, delivery_id, number, **options)
    else:
        queue.enqueue_at(at, WEBHOOK_ATTEMPT, delivery_id, number, **options)


def enqueue_redelivery(delivery_id: str) -> None:
    """Queue one more send of a delivery, outside its retry schedule."""
    queues.get_queue(queues.WEBHOOKS).enqueue(
        WEBHOOK_REDELIVER, delivery_id,
        **_webhook_options(f"webhook-{delivery_id}-manual-{secrets.token_hex(4)}"))
