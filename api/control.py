"""Batch control and live status: cancel, retry failed images, server-sent progress events."""
from __future__ import annotations

import json
import logging
import re
import time

from flask import Blueprint, Response, jsonify, request
from redis.exceptions import RedisError

from api.batches import base_url, load_batch
from api import app_settings
from api.errors import ApiError
from infra import jobs, stores
from schemas.batch import BatchStatus, batch_json
from schemas.records import BatchRecord

log = logging.getLogger(__name__)
bp = Blueprint("control", __name__, url_prefix="/api/v1/batches")


def _conflict(detail: str, batch: BatchRecord, kind: str) -> ApiError:
    return ApiError(409, "Conflict", detail, kind=kind, batch_status=batch.status.value)


# --- cancel -----------------------------------------------------------------------------------

@bp.post("/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    batch = load_batch(batch_id)
    cancelled = stores.batches().cancel(batch_id)
    if cancelled is None:
        batch = load_batch(batch_id)
        raise _conflict(f"the batch has already finished ({batch.status.value}); only a queued or "
                        "processing batch can be cancelled", batch, "already-finished")
    dropped = jobs.drop_queued_jobs(cancelled)
    log.info("batch cancelled", extra={"batch_id": batch_id, "dropped_jobs": dropped})
    try:
        jobs.enqueue_announce(batch_id)  # a worker sends batch.cancelled
    except RedisError as error:
        # The cancel itself is stored; without Redis no worker could send the event anyway.
        log.error("could not enqueue the cancelled batch's announcement: %s", error,
                  extra={"batch_id": batch_id})
    return jsonify(batch_json(cancelled, base_url()))


# --- retry ------------------------------------------------------------------------------------

@bp.post("/<batch_id>/retry")
def retry_batch(batch_id: str):
    batch = load_batch(batch_id)
    status = batch.status
    if not status.finished:
        raise _conflict("the batch is still running; retry it once it has finished",
                        batch, "still-running")
    if status == BatchStatus.CANCELLED:
        raise _conflict("a cancelled batch cannot be retried; upload the file again",
                        batch, "cancelled")
    failed = stores.products().failed_images(batch_id) if batch.parsed else []
    if not failed:
        raise _conflict("the batch has no failed images to retry", batch, "nothing-to-retry")
    slots = sum(image.occurrences for image in failed)
    claimed = stores.batches().start_retry(batch, slots)
    if claimed is None:
        raise _conflict("the batch changed while the retry was being set up (another retry?)",
                        load_batch(batch_id), "retry-conflict")
    stores.products().reset_images([image.id for image in failed])
    chunk_numbers = sorted({image.chunk for image in failed})
    try:
        jobs.enqueue_chunks(batch_id, chunk_numbers)
    except RedisError as error:
        # The reset images are stored as pending: the stall sweeper enqueues them later.
        log.error("could not enqueue the retried chunks: %s", error, extra={"batch_id": batch_id})
    log.info("batch retried", extra={"batch_id": batch_id, "images": len(failed)})
    response = jsonify(batch_json(claimed, base_url()))
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/batches/{batch_id}"
    return response


# --- progress events --------------------------------------------------------------------------

PHASE_QUEUED, PHASE_STARTED, PHASE_PARSED, PHASE_FINISHED, PHASE_FINAL = range(5)


def event_key(batch: BatchRecord) -> tuple[int, int, int]:
    """A monotonic position in the batch's life: (retry run, phase, finished image slots).

    Within one run the phase only moves forward and the count only grows; a retry starts a new
    run. So a later state always has a larger key, and Last-Event-ID can be compared with it.
    """
    status = batch.status
    if status.finished:
        phase = PHASE_FINISHED
    elif status == BatchStatus.QUEUED:
        phase = PHASE_QUEUED
    else:
        phase = PHASE_PARSED if batch.parsed else PHASE_STARTED
    return (batch.retries, phase, batch.done_slots)


def final_key(batch: BatchRecord) -> tuple[int, int, int]:
    return (batch.retries, PHASE_FINAL, 0)


def format_key(key: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in key)


def parse_key(raw: str | None) -> tuple[int, int, int] | None:
    """A Last-Event-ID this API sent; anything else is ignored (the stream starts afresh)."""
    if not raw:
        return None
    parts = raw.strip().split(".")
    if len(parts) != 3 or not all(re.fullmatch(r"[0-9]{1,18}", p) for p in parts):
        return None
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def sse(event: str | None, data: str | None = None, event_id: str | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.split("\n"))
    return "\n".join(lines) + "\n\n"


@bp.get("/<batch_id>/events")
def batch_events(batch_id: str):
    batch = load_batch(batch_id)
    settings = app_settings()
    last = parse_key(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))
    if last is not None and batch.finished and last >= final_key(batch):
        # The client has seen the final event: 204 tells an EventSource to stop reconnecting.
        return Response(status=204)
    owner, root = batch.owner, base_url()

    def stream():
        sent_key = last
        started = last_write = time.monotonic()
        yield f"retry: {settings.events_retry_ms}\n\n"
        current = batch
        while True:
            key = event_key(current)
            if sent_key is None or key > sent_key:
                sent_key = key
                last_write = time.monotonic()
                yield sse("progress", json.dumps(batch_json(current, root),
                                                 separators=(",", ":")), format_key(key))
            if current.finished:
                yield sse("status", json.dumps(batch_json(current, root),
                                               separators=(",", ":")),
                          format_key(final_key(current)))
                return
            if time.monotonic() - started >= settings.events_max_stream_s:
                yield ": stream time limit reached; reconnect with Last-Event-ID\n\n"
                return
            time.sleep(settings.events_poll_s)
            if time.monotonic() - last_write >= settings.events_heartbeat_s:
                last_write = time.monotonic()
                yield ": heartbeat\n\n"
            current = stores.batches().get(batch_id, owner)
            if current is None:  # deleted meanwhile
                yield sse("error", json.dumps({"detail": "the batch no longer exists"}))
                return

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
