"""Processing one chunk of a batch's images: download (politely: per-host slots and limits,
Retry-After waits rescheduled, retries of transient failures, none of them waited for in a pool
thread: worker/dispatch.py; conditionally, when the image was processed before: see
worker/reuse.py), re-encode or copy the earlier outputs, store, record, in a bounded pool."""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable
from urllib.parse import urlsplit

from rq import get_current_job

from infra import host_slots, jobs, metrics, queues, storage, stores
from infra.batching import Batch
from infra.per_process import per_process
from infra.settings import Settings
from schemas.batch import BatchStatus
from schemas.failures import FailureCode
from schemas.object_names import object_stem
from schemas.records import ImageRecord, SourceRecord
from schemas.reuse import content_hash
from worker import dispatch
from worker.download import DownloadError, Fetched, Validators, fetch, make_session
from worker.encode import ImageError, compress, draft_edge, header_pixels
from worker.pixel_budget import PixelBudget
from worker.reuse import Known, Outputs, copy_outputs, unchanged
from worker.stopping import STOPPING

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 1.0
COUNT_FLUSH_S = 1.0  # how stale a running batch's counters may be


def encode_slots_count() -> int:
    """How many images may be decoded and encoded at once: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Decoding and encoding are CPU work with the GIL released: more of them at once than cores only
# makes them share caches (4 encoders on 2 cores are ~10 % slower than 2), while the pool's other
# steps (download, S3 put, MongoDB) mostly wait. So the pool has IMAGE_CONCURRENCY threads and at
# most one encoder per core; a thread waiting for a slot holds only its downloaded bytes.
# Process-wide (jobs run one at a time, but tests and the embedded mode may run several); made
# anew in a forked child, where the parent's threads that may hold slots do not exist.
@per_process
def _encode_slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(encode_slots_count())


# Slots bound how many images are decoded at once, not how large they are: the pixel budget
# bounds their sum, so the process's peak memory follows MAX_PIXELS_IN_FLIGHT. Same per-process
# rule as the slots.
@per_process(maxsize=1)
def pixel_budget(limit: int) -> PixelBudget:
    """This process's pixel budget (made anew when MAX_PIXELS_IN_FLIGHT changes)."""
    return PixelBudget(limit)


def output_key(batch_id: str, digest: str, url: str, extension: str,
               size: str | None = None) -> str:
    """Deterministic: the same input URL in the same batch always lands on the same key, named
    after the input file (`<batch>/<hash>/p800_coffee.jpg`, `…/p800_coffee-thumb.jpg`)."""
    suffix = f"-{size}" if size else ""
    return (f"{storage.OUTPUT_PREFIX}{batch_id}/{digest}/{object_stem(url)}{suffix}"
            f".{extension}")


class _CancelWatch:
    """Reads the batch status at most once a second, shared by the pool's threads; says stop
    too when the process is stopping (worker/stopping.py)."""

    def __init__(self, batch_id: str, later: _Later | None = None):
        self.batch_id = batch_id
        self.later = later or _Later()
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stop = False

    def should_stop(self) -> bool:
        if STOPPING.is_set():
            return True
        with self._lock:
            if not self._stop and time.monotonic() - self._checked > CANCEL_CHECK_S:
                self._checked = time.monotonic()
                self._stop = stores.batches().status_of(self.batch_id) != BatchStatus.PROCESSING
            return self._stop


class _Later:
    """The shortest wait a server asked for among the images put back (shared by the threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: float | None = None

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds = seconds if self.seconds is None else min(self.seconds, seconds)


class _Run:
    """What one run of a chunk saves in store round trips, shared by its threads.

    Attempts: the fresh images' attempts are counted in one update as the run starts, not one
    per image. A worker killed mid-chunk leaves that attempt on every image it had not finished,
    so the next run takes them for suspects (one at a time, as for any image started when a
    worker died). An image whose try stops for a reason not its own (S3 down, a backoff) gets
    its attempt back at once, and a later try of it in the run counts its own; the images the
    run leaves pending (put back, cancelled) get theirs back in one update at its end, except
    those put back to wait for a server (`_deferrals` takes those off).

    Counts: the slots a mark_* call finished (only the call that made the change gets them) are
    added to the batch's counters by one update at most every COUNT_FLUSH_S and at the run's
    end, not one per image. A worker killed in between loses those additions, never doubles
    them: the chunk job that then finds the batch done but short, or the stall sweeper,
    re-derives the counts from the images (sweeper.recount_if_alone).
    """

    local = threading.local()  # the run a pool thread works for (see _one)

    def __init__(self, batch_id: str, fresh: list[ImageRecord]):
        self.batch_id = batch_id
        self.claimed = stores.products().start_attempts([im.id for im in fresh])
        self._kept: set[str] = set()
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    @classmethod
    def current(cls) -> _Run | None:
        return getattr(cls.local, "run", None)

    def keep_attempt(self, image: ImageRecord) -> None:
        with self._lock:
            self._kept.add(image.id)

    def unclaim(self, image: ImageRecord) -> None:
        with self._lock:
            self.claimed.discard(image.id)

    def release(self, images: list[ImageRecord]) -> None:
        """Give back the claimed attempts of the images still pending and not kept."""
        with self._lock:
            back = [im.id for im in images if im.id in self.claimed and im.id not in self._kept]
        stores.products().undo_attempts(back)  # the done ones are no longer pending: untouched

    def count(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                self._counts[name] = self._counts.get(name, 0) + value

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        if not any(counts.values()):
            return
        try:
            stores.batches().add_image_results(self.batch_id, **counts)
        except BaseException:
            self.count(**counts)  # kept for the next flush
            raise

    @contextmanager
    def flushing(self):
        """Flush every COUNT_FLUSH_S from a thread while the block runs, and once at its end."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(COUNT_FLUSH_S):
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - the store is down: the next flush tries again
                    log.warning("could not add image results", exc_info=True,
                                extra={"batch_id": self.batch_id})
        thread = threading.Thread(target=loop, name="counts", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.flush()


def _start_attempt(image: ImageRecord) -> ImageRecord | None:
    run = _Run.current()
    if run is not None and image.id in run.claimed:
        return image  # counted as the run started
    return stores.products().start_attempt(image)


def _keep_attempt(image: ImageRecord) -> None:
    run = _Run.current()
    if run is not None:
        run.keep_attempt(image)


def _add_results(batch_id: str, **counts: int) -> None:
    run = _Run.current()
    if run is None:
        stores.batches().add_image_results(batch_id, **counts)
    else:
        run.count(**counts)


def _throttle_key(image: ImageRecord) -> str:
    return f"bp:throttle:{image.id}"


def _deferrals(images: list[ImageRecord]) -> dict[str, int]:
    """How many times each image was put back to wait (those runs counted an attempt too)."""
    pipe = queues.get_redis().pipeline(transaction=False)
    for image in images:
        pipe.hget(_throttle_key(image), "deferred")
    return {im.id: int(n or 0) for im, n in zip(images, pipe.execute())}


def process_chunk(batch_id: str, chunk: int, settings: Settings) -> int:
    """Process the chunk's pending images; returns how many this run finished. Images a server
    asked to wait for are left pending and the chunk is queued again for after the wait."""
    with metrics.cpu_step("chunk"):  # this thread's: the pool's threads count their own steps
        return _process_chunk(batch_id, chunk, settings)


def _process_chunk(batch_id: str, chunk: int, settings: Settings) -> int:
    if STOPPING.is_set():  # taken just as the process stops: for the workers that go on
        _run_again(batch_id, chunk, None)
        return 0
    images = stores.products().pending_images(batch_id, chunk)
    if not images:
        return 0
    deferred = _deferrals(images)
    for image in images:
        image.attempts = max(0, (image.attempts or 0) - deferred[image.id])
    later = _Later()
    watch = _CancelWatch(batch_id, later)
    known = Known.load(stores.batches().get(batch_id, any_owner=True), images,
                       settings)  # one read for the chunk's URLs
    sizes, full_size = known.sizes, known.full_size
    session = make_session(settings, pool_size=settings.image_concurrency,
                           trusted_origins=settings.image_origin_prefixes)
    # Images started before by a run that died (worker killed: OOM, decoder crash) go last and
    # one at a time, so a poison image takes down no image beside it and reaches its attempt
    # limit alone.
    fresh = [im for im in images if not im.attempts]
    suspects = [im for im in images if im.attempts]
    run = _Run(batch_id, fresh)
    deadline = time.monotonic() + settings.chunk_budget  # then the rest goes in a next job
    finished = 0
    sent = metrics.batch()  # the images' metrics, a pipeline a second at most
    try:
        with run.flushing():
            for group, threads in ((fresh, settings.image_concurrency), (suspects, 1)):
                outcome = dispatch.run(
                    group, lambda im, wake: _host_slot(im, settings, wake),
                    lambda im, slot: _one(im, batch_id, session, settings, watch, sizes, known,
                                          slot=slot, full_size=full_size, run=run,
                                          metrics_batch=sent),
                    threads=threads, host_of=_host, stop=watch.should_stop,
                    deadline=deadline, name=f"chunk{chunk}")
                finished += outcome.finished
                _put_back(outcome, later)
    except storage.StorageUnavailable:
        run.release(fresh)  # S3 down is no image's fault
        raise
    else:  # any other way out (a job timeout on an image that hangs) keeps the attempts
        if finished < len(images):
            run.release(fresh)
    finally:
        session.close()
        sent.flush()
        known.flush()
    if STOPPING.is_set() and finished < len(images):  # the rest: for the workers that go on
        _run_again(batch_id, chunk, None)
    elif later.seconds is not None:
        _run_again(batch_id, chunk, later.seconds)
    return finished


def _run_again(batch_id: str, chunk: int, seconds: float | None) -> None:
    """The chunk queued again: after `seconds`, or at once (None), under an id other than this
    job's."""
    current = get_current_job()
    jobs.enqueue_chunk_later(batch_id, chunk, seconds,
                             current_job_id=current.id if current else None)


def _one(image: ImageRecord, batch_id: str, session, settings: Settings, watch: _CancelWatch,
         sizes: dict[str, int] | None = None, known: Known | None = None, *,
         slot: host_slots.Slot | None = None, full_size: bool = True,
         run: _Run | None = None, metrics_batch: Batch | None = None) -> int:
    """One image, its host's `slot` already taken (worker/dispatch.py; released here at the
    latest), for `run` (None: on its own, every store update made at once). Its metrics go to
    Redis in one pipeline at its end, or with `metrics_batch`."""
    _Run.local.run = run
    try:
        if watch.should_stop():
            return 0
        alone = known is None  # one image on its own (process_chunk reads a chunk's at once)
        if alone:
            known = Known.load(stores.batches().get(batch_id, any_owner=True), [image],
                               settings)
        try:
            with metrics.deferred(metrics_batch), metrics.cpu_step("image"):
                return _process(image, batch_id, session, settings, sizes or {}, watch.later,
                                known, slot, full_size)
        finally:
            if alone:
                known.flush()
    finally:
        _Run.local.run = None
        if slot is not None:  # released after the download already, unless it never began
            slot.release()


def _host(image: ImageRecord) -> str:
    return (urlsplit(image.url).hostname or "").lower()


def _host_slot(image: ImageRecord, settings: Settings, wake=None) -> host_slots.Slot | None:
    """The slot of the image's host its download goes in (None for a URL without a host: it
    fails at download). dispatch.NotNow while the host is paused or all its slots are taken.
    `wake` is called when the slot is released (the dispatcher tries busy hosts again)."""
    host = _host(image)
    if not host:
        return None
    paused, slot = host_slots.claim(queues.get_redis(), host, settings.per_host_concurrency,
                                    settings.download_timeout_s + 30, wake)
    if paused > 0:  # the host asked everyone to wait: not fetched, not counted as an attempt
        raise dispatch.NotNow(paused, dispatch.PAUSED)
    if slot is None:
        raise dispatch.NotNow(dispatch.POLL_S, dispatch.BUSY)
    return slot


def _put_back(outcome: dispatch.Outcome, later: _Later) -> None:
    """Images the dispatcher put back stay pending; the chunk runs again after the wait."""
    with metrics.deferred():  # one round trip for all of them
        for _, reason in outcome.put_back:
            metrics.image_deferred(reason)
    if outcome.wait is not None:
        later.add(outcome.wait)


def _key_for(batch_id: str, image: ImageRecord) -> Callable[[str, str | None], str]:
    """This batch's key of the image's output of an extension, and of a size."""
    return lambda extension, size=None: output_key(batch_id, image.hash, image.url, extension,
                                                   size)


def _process(image: ImageRecord, batch_id: str, session, settings: Settings,
             sizes: dict[str, int], later: _Later, known: Known,
             slot: host_slots.Slot | None = None, full_size: bool = True) -> int:
    host = _host(image)
    # Runs that put the image back to wait counted an attempt too, and were no crash:
    # process_chunk has taken them off `attempts` (start_attempt may overwrite it).
    crashes = image.attempts
    started = _start_attempt(image)  # counted before any work that could crash
    if started is None:
        return 0  # another run finished it meanwhile
    if crashes + 1 > settings.max_image_attempts:
        return _record_failure(image, batch_id, f"gave up after {settings.max_image_attempts} "
                               "attempts: the worker died while processing it",
                               FailureCode.WORKER_DIED, None)
    bytes_in = None
    previous = known.previous(image.url)
    try:
        # A host not slowed down when its slot was taken has no limit to raise: no round trip.
        slowed = slot.slowed if slot is not None else True
        with metrics.cpu_step("download"):
            fetched = _download_or_wait(image, session, host, settings, later,
                                        known.validators(image.url), slowed)
        if fetched is None:
            return 0
        with metrics.cpu_step("hash"):
            sha256 = None if fetched.not_modified else content_hash(fetched.data)
        how = unchanged(previous, fetched, sha256)
        if how is not None:
            try:
                return _reused(image, batch_id, known, previous, fetched, how)
            except storage.ObjectMissing:  # its outputs are gone: processed anew
                log.info("outputs to reuse are gone; processing anew",
                         extra={"batch_id": batch_id})
            if fetched.not_modified:  # no bytes came: fetch them, unconditionally
                fetched = _download_or_wait(image, session, host, settings, later, None,
                                            slowed)
                if fetched is None:
                    return 0
                sha256 = content_hash(fetched.data)
        if slot is not None:
            slot.release()  # the host's slot, before the encode
        bytes_in = len(fetched.data)
        with metrics.cpu_step("encode"):
            encoded = _encode(fetched.data, settings, sizes, full_size)
        fetched = replace(fetched, data=b"")  # the download's memory, freed before the puts
        key_for = _key_for(batch_id, image)
        # Without a full-size output the main one is a size's, and named after it.
        key = key_for(encoded.extension, encoded.size_name)
        with metrics.cpu_step("store"):
            _store(key, encoded)
        size_keys = {}
        by_edge: dict[int, str] = {}  # sizes of one edge share one object, the first's name
        for name, variant in encoded.variants.items():
            if name == encoded.size_name:  # the main output is this size's
                size_keys[name] = key
                continue
            if variant is None:  # not larger than that size: the main output serves it
                size_keys[name] = None
                continue
            if sizes[name] not in by_edge:
                by_edge[sizes[name]] = key_for(variant.extension, name)
                with metrics.cpu_step("store"):
                    _store(by_edge[sizes[name]], variant)
            size_keys[name] = by_edge[sizes[name]]
        outputs = Outputs(key, size_keys)
    except (DownloadError, ImageError) as error:
        return _record_failure(image, batch_id, str(error), error.code, bytes_in)
    except (storage.StorageUnavailable, dispatch.NotNow):
        # Not the image's fault: it stays pending (attempt taken back). S3 down: the chunk job
        # fails, so RQ retries it (JOB_RETRY_SCHEDULE), or the sweeper re-enqueues it later;
        # NotNow: the dispatcher tries the image again after its backoff.
        _give_back_attempt(image)
        raise
    except Exception as error:  # noqa: BLE001 - one image must never take the chunk down
        log.exception("image failed unexpectedly", extra={"batch_id": batch_id})
        return _record_failure(image, batch_id, f"internal error: {type(error).__name__}",
                               FailureCode.INTERNAL_ERROR, bytes_in)
    facts = dict(bytes_in=bytes_in, bytes_out=len(encoded.data),
                 content_type=encoded.content_type, kept_original=encoded.kept_original,
                 width=encoded.width, height=encoded.height, format=encoded.input_format,
                 output_format=encoded.output_format)
    with metrics.cpu_step("record"):
        slots = _mark_processed(image, batch_id, outputs, facts)
        if slots:
            metrics.image_processed(bytes_in, facts["bytes_out"])
            known.remember(image, batch_id, fetched, sha256, outputs, facts)
    return 1 if slots else 0


def _download_or_wait(image: ImageRecord, session, host: str, settings: Settings, later: _Later,
                      validators: Validators | None, slowed: bool = True) -> Fetched | None:
    """The image fetched politely, or None when its server asked to wait (the image is put
    back, `later` holds the wait); dispatch.NotNow to try again after a backoff; DownloadError
    when it failed, or the waits would pass MAX_RETRY_AFTER_S."""
    try:
        return _polite_download(session, image, host, settings, validators, slowed)
    except DownloadError as error:
        if not error.throttled:
            raise
        failure, delay = _throttled(image, error, settings)
        if failure is None:
            later.add(delay)
            _keep_attempt(image)
            return None
        raise DownloadError(failure, error.code) from None


def _reused(image: ImageRecord, batch_id: str, known: Known, previous: SourceRecord,
            fetched: Fetched, how: str) -> int:
    """The image as processed before: its outputs copied under this batch's keys, its facts
    the stored ones; nothing decoded or encoded."""
    outputs = copy_outputs(previous, _key_for(batch_id, image))
    facts = dict(bytes_in=previous.bytes_in, bytes_out=previous.bytes_out,
                 content_type=previous.content_type, kept_original=previous.kept_original,
                 width=previous.width, height=previous.height, format=previous.format,
                 output_format=previous.output_format)
    slots = _mark_processed(image, batch_id, outputs, facts, reused=True)
    if slots:
        metrics.image_reused(how, 0 if fetched.not_modified else len(fetched.data))
        known.remember_reuse(previous, batch_id, fetched, outputs)
        return 1
    return 0


def _mark_processed(image: ImageRecord, batch_id: str, outputs: Outputs, facts: dict,
                    reused: bool = False) -> int:
    """pending -> processed and the batch's counts; the slots it finished (0: another run
    did)."""
    slots = stores.products().mark_processed(
        image, key=outputs.key, output_url=storage.public_url(outputs.key),
        sizes=outputs.size_urls(), reused=reused, **facts)
    if slots:  # the uses as of the change: the parse may still be adding some
        _add_results(batch_id, processed=slots, reused=slots if reused else 0,
                     bytes_in=facts["bytes_in"], bytes_out=facts["bytes_out"])
    return slots


def _polite_download(session, image: ImageRecord, host: str, settings: Settings,
                     validators: Validators | None = None, slowed: bool = True) -> Fetched:
    """fetch() once, in the host's slot the caller holds. A failure of the connection or a 5xx
    answer: dispatch.NotNow, to try again after a growing wait (no thread waits), until
    DOWNLOAD_RETRIES more tries have failed. An answer speeds a slowed-down host up again
    (`slowed`: the host's limit was lowered when its slot was taken)."""
    try:
        fetched = metrics.timed("download_seconds", fetch, session, image.url, settings,
                                validators=validators)
    except DownloadError as error:
        if not error.transient:
            raise
        tries = _count_try(image, settings)
        if tries <= settings.download_retries:
            raise dispatch.NotNow(settings.download_retry_backoff_s * 2 ** (tries - 1),
                                  dispatch.BACKOFF) from None
        if tries > 1:
            raise DownloadError(f"{error} ({tries} tries)", error.code, status=error.status,
                                host=error.host) from None
        raise
    if host and slowed:
        host_slots.speed_up(queues.get_redis(), host, settings.per_host_concurrency)
    return fetched


def _count_try(image: ImageRecord, settings: Settings) -> int:
    """One more failed try at the image's download (kept in Redis: a chunk put back and run
    again goes on counting); how many so far."""
    pipe = queues.get_redis().pipeline()
    pipe.hincrby(_throttle_key(image), "tries", 1)
    pipe.expire(_throttle_key(image), int(settings.max_retry_after_s) + 86400)
    return pipe.execute()[0]


def _give_back_attempt(image: ImageRecord) -> None:
    """The attempt start_attempt counted did not end by the image's fault: take it back (in
    the store and on the record the dispatcher may run again)."""
    run = _Run.current()
    if run is not None:
        run.unclaim(image)  # a later try of it in this run counts an attempt of its own
    stores.products().undo_attempt(image)
    image.attempts = max(0, (image.attempts or 0) - 1)


def _throttled(image: ImageRecord, error: DownloadError,
               settings: Settings) -> tuple[str | None, float]:
    """A 429 (or 503 with Retry-After): (None, the wait) when the image is put back to wait,
    else the failure to record because the waits would pass MAX_RETRY_AFTER_S."""
    conn = queues.get_redis()
    key = _throttle_key(image)
    now = time.time()
    pipe = conn.pipeline()
    pipe.hsetnx(key, "first", repr(now))
    pipe.hincrby(key, "hits", 1)
    pipe.hget(key, "first")
    pipe.expire(key, int(settings.max_retry_after_s) + 86400)
    _, hits, first, _ = pipe.execute()
    delay = error.retry_after if error.retry_after is not None else \
        settings.download_retry_backoff_s * 2 ** min(hits - 1, 10)
    _slow_host(conn, _host(image), error, delay, settings)
    spent = now - float(first)
    if spent + delay > settings.max_retry_after_s:
        return (f"HTTP {error.status} from {error.host} {hits} "
                f"{'time' if hits == 1 else 'times'} over {_duration(spent)}"), delay
    conn.hincrby(key, "deferred", 1)
    host_slots.pause_host(conn, error.host, delay)  # every worker leaves the host alone meanwhile
    metrics.image_deferred("throttled")
    return None, delay


def _slow_host(conn, host: str, error: DownloadError, delay: float, settings: Settings) -> None:
    """A throttle answer: counted, and the host's allowed concurrency halved (once for the
    answers of one episode, as long as the wait it asked for; host_slots.slow_down)."""
    metrics.host_throttled(error.status)
    if host and host_slots.slow_down(conn, host, settings.per_host_concurrency,
                                     delay) is not None:
        metrics.host_slowed_down()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _store(key: str, encoded) -> None:
    storage.put_bytes_retrying(key, encoded.data, encoded.content_type,
                               cache_control="public, max-age=31536000, immutable")


def _encode(data: bytes, settings: Settings, sizes: dict[str, int] | None = None,
            full_size: bool = True):
    """compress() within the pixel budget and in one of the per-core slots; encode_seconds is
    the encoding, not the waits."""
    elapsed = 0.0
    budget = pixel_budget(settings.max_pixels_in_flight)
    pixels = header_pixels(data, draft_edge(sizes, full_size))  # what the decode will hold
    if pixels > settings.max_image_pixels:
        pixels = 0  # refused from its header, before any pixel is decoded
    try:
        with budget.admit(pixels), _encode_slots():
            started = time.perf_counter()
            try:
                return compress(data, quality=settings.output_quality,
                                max_pixels=settings.max_image_pixels,
                                optimize=settings.output_optimize,
                                webp_method=settings.webp_method,
                                keep_original=settings.keep_original_when_smaller,
                                sizes=sizes, full_size=full_size)
            finally:
                elapsed = time.perf_counter() - started
    finally:  # outside the slot (in _one it is only held until the image's pipeline is sent)
        metrics.observe("encode_seconds", elapsed)


def _record_failure(image: ImageRecord, batch_id: str, error: str, code: FailureCode,
                    bytes_in: int | None) -> int:
    slots = stores.products().mark_failed(image, error, code, bytes_in)
    if slots:
        _add_results(batch_id, failed=slots)
        metrics.image_failed(code, bytes_in)
        return 1
    return 0
