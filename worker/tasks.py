"""RQ job entry points: parse a batch, process an image chunk, and finish the batch once."""
from __future__ import annotations

import logging
import types

from rq import Callback, Retry

from infra import batch_store, logging_setup, metrics, product_store, queues, storage
from infra.settings import get_settings
from worker import chunks, notify
from worker.csv_reader import CsvFileError
from worker.parse import parse_into_store

log = logging.getLogger(__name__)


def chunk_job_id(batch_id: str, chunk: int) -> str:
    return f"{batch_id}-chunk-{chunk}"


def parse_job_id(batch_id: str) -> str:
    return f"{batch_id}-parse"


PARSE_RETRY_INTERVALS = [10, 60, 300]  # seconds before each retry of a failed parse job
PARSE_CRASHED = ("the file could not be processed: reading it failed with an internal error "
                 "on every attempt")


def enqueue_parse(batch_id: str):
    """Put a batch's parse job on the queue (the upload's last step)."""
    return queues.get_queue(queues.BATCHES).enqueue(
        parse_batch, batch_id, job_id=parse_job_id(batch_id),
        job_timeout=get_settings().job_timeout_s, result_ttl=3600, failure_ttl=7 * 86400,
        retry=Retry(max=len(PARSE_RETRY_INTERVALS), interval=list(PARSE_RETRY_INTERVALS)),
        on_failure=Callback(parse_failed, timeout=60),
        meta={"request_id": logging_setup.request_id_var.get()},  # the upload's, in job logs
    )


def enqueue_chunks(batch_id: str, chunk_numbers) -> None:
    """All of a batch's chunk jobs in one Redis pipeline."""
    settings = get_settings()
    queue = queues.get_queue(queues.IMAGES)
    jobs = [queue.prepare_data(
        process_chunk, args=(batch_id, n), job_id=chunk_job_id(batch_id, n),
        timeout=settings.job_timeout_s, result_ttl=600, failure_ttl=7 * 86400,
        retry=Retry(max=3, interval=[10, 60, 300]),
    ) for n in chunk_numbers]
    for start in range(0, len(jobs), 500):
        queue.enqueue_many(jobs[start:start + 500])


def parse_batch(batch_id: str) -> dict:
    """Read the batch's CSV from S3, store its rows, and fan the images out as chunk jobs."""
    settings = get_settings()
    batch = batch_store.start(batch_id)
    if batch is None:
        return {"skipped": "batch is not queued or processing"}
    try:
        body = storage.open_stream(batch["csv_key"])
        try:
            result = parse_into_store(batch_id, body, settings)
        finally:
            body.close()
    except CsvFileError as error:
        finish(batch_store.fail(batch_id, f"the file could not be read: {error}"))
        return {"failed": str(error)}
    batch_store.record_parse(batch_id, header=result.header, rows_total=result.rows_total, rows_valid=result.rows_valid,
                             rows_invalid=result.rows_invalid, images_total=result.images_total,
                             chunks=result.chunks)
    metrics.rows_parsed(result.rows_valid, result.rows_invalid)
    pending = product_store.pending_chunks(batch_id)
    enqueue_chunks(batch_id, pending)
    finish(batch_store.try_finish(batch_id))
    return {"rows": result.rows_total, "images": result.images_total, "chunks": len(pending)}


def parse_failed(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback of the parse job: after its last retry the batch fails for good.

    RQ calls it on every failure, before it decides on a retry (and lowers `retries_left`
    after this call), so a failure with retries left is not the last one. The error kept on
    the batch names no exception: the traceback is in the worker's log and RQ's failed
    registry. (A worker killed mid-parse runs no callback: the stall sweeper covers that.)
    """
    if job.retries_left:
        return
    batch_id = job.args[0]
    # RQ also calls this for a job it takes for abandoned (a killed worker), with a stack
    # summary for a traceback, and in 2.12 even for one that succeeded (rq#2424): a batch whose
    # file was read is left alone (the sweeper looks after its chunks).
    real_traceback = isinstance(traceback, types.TracebackType)
    log.error("parse job failed for good", extra={"batch_id": batch_id},
              exc_info=(exc_type, exc_value, traceback) if real_traceback else None)
    finish(batch_store.fail(batch_id, PARSE_CRASHED, unparsed_only=True))


def process_chunk(batch_id: str, chunk: int) -> dict:
    """Process one chunk's pending images, then finish the batch if that was the last work."""
    settings = get_settings()
    if batch_store.status_of(batch_id) != "processing":
        return {"skipped": "batch is not processing"}
    done = chunks.process_chunk(batch_id, chunk, settings)
    finish(batch_store.try_finish(batch_id))
    return {"images": done}


def finish(batch: dict | None) -> None:
    """Announce a batch that has just reached its final state (called by the one that did)."""
    if batch is not None:
        log.info("batch finished", extra={"batch_id": batch["_id"], "status": batch["status"]})
        metrics.batch_finished(batch["status"])
        notify.batch_finished(batch)
