"""RQ job entry points: parse a batch, process an image chunk, and finish the batch once."""
from __future__ import annotations

import logging
import types

from rq import get_current_job

from infra import jobs, metrics, storage, stores
from infra.settings import get_settings
from worker import chunks, notify
from worker.csv_reader import CsvFileError
from schemas.batch import BatchStatus
from schemas.records import BatchRecord
from worker.parse import parse_into_store

log = logging.getLogger(__name__)


PARSE_CRASHED = ("the file could not be processed: reading it failed with an internal error "
                 "on every attempt")


def parse_batch(batch_id: str) -> dict:
    """Read the batch's CSV from S3 as a stream: rows stored and chunk jobs queued block by
    block while it is read (worker/parse.py), then the batch marked as read."""
    settings = get_settings()
    batch = stores.batches().start(batch_id)
    if batch is None:
        return {"skipped": "batch is not queued or processing"}
    try:
        body = storage.open_stream(batch.csv_key)
        try:
            with metrics.cpu_step("parse"):
                result = parse_into_store(batch_id, body, settings)
        finally:
            body.close()
    except CsvFileError as error:
        finish(stores.batches().fail(batch_id, f"the file could not be read: {error}"))
        return {"failed": str(error)}
    if result.stopped:
        return {"stopped": "the batch stopped while its file was read", "rows": result.rows_total}
    # Only now may the batch finish: the last chunk job to end, or this call, finishes it.
    stores.batches().finish_reading(batch_id, header=result.header)
    finish(stores.batches().try_finish(batch_id))
    return {"rows": result.rows_total, "images": result.images_total, "chunks": result.chunks}


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
    finish(stores.batches().fail(batch_id, PARSE_CRASHED, unparsed_only=True))


def process_chunk(batch_id: str, chunk: int) -> dict:
    """Process one chunk's pending images, then finish the batch if that was the last work."""
    settings = get_settings()
    if stores.batches().status_of(batch_id) != BatchStatus.PROCESSING:
        return {"skipped": "batch is not processing"}
    done = chunks.process_chunk(batch_id, chunk, settings)
    finished = stores.batches().try_finish(batch_id)
    if finished is None:  # if only counts a killed run lost stand in the way, re-derive them
        from worker import sweeper  # it imports this module
        current = get_current_job()
        finished = sweeper.recount_if_alone(batch_id, current.id if current else None)
    finish(finished)
    return {"images": done}


def announce(batch_id: str) -> None:
    """Job: announce a batch that the API moved to its final state (a cancel)."""
    finish(stores.batches().get(batch_id, any_owner=True))


def finish(batch: BatchRecord | None) -> None:
    """Announce a batch that has just reached its final state (called by the one that did)."""
    if batch is not None:
        log.info("batch finished", extra={"batch_id": batch.id, "status": batch.status.value})
        metrics.batch_finished(batch.status.value)
        notify.batch_finished(batch)
