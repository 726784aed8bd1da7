"""Prometheus metrics, correct across gunicorn workers, RQ workers and hosts.

Two kinds, both exposed by the API's `/metrics`:

- **Pipeline metrics** (batches, rows, images, bytes, download/encode durations, webhook
  attempts) happen in RQ workers, which fork a work horse per job and may run on other hosts than
  the API. They are kept in Redis (one hash, `HINCRBYFLOAT` in one pipeline per event, or per
  `deferred()` block, or per `Batch` of several threads' blocks, at most a second behind),
  which every process already shares, and read at scrape time. A histogram
  observation writes one bucket, sum and count; the scrape makes the buckets cumulative.
  Counters survive worker restarts and add up over any number of workers.
- **API metrics** (HTTP requests and their durations) use `prometheus_client` in the API process.
  Under gunicorn with several workers, set `PROMETHEUS_MULTIPROC_DIR` to an empty directory (the
  environment variable itself, before start-up): every worker writes its own files there and a
  scrape adds them up (`gunicorn.conf.py` marks exited workers dead).
- **Queue depths and workers** are read from RQ's registries at scrape time.

Recording never raises: a metric that cannot be written is dropped with a debug log line.
"""
from __future__ import annotations

import logging
import os
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Callable, TypeVar

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from infra.batching import Batch

log = logging.getLogger(__name__)

T = TypeVar("T")

REDIS_KEY = "batchpress:metrics"
# Histogram buckets are kept per bucket, not cumulative, in fields `<name>_bin|...,le=<bound>`
# (one write per observation). Fields `<name>_bucket` hold cumulative counts written before
# that change (or by a worker not yet updated); a scrape adds both.
BIN_SUFFIX = "_bin"
NAMESPACE = "batchpress"

DOWNLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENCODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WEBHOOK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# name -> (type, help, bucket bounds for histograms)
PIPELINE = {
    "batches_created_total": ("counter", "Batches accepted at upload.", None),
    "batches_finished_total": ("counter", "Batches that reached a final status, by status.", None),
    "rows_total": ("counter", "CSV data rows read, by result (accepted, rejected).", None),
    "images_total": ("counter", "Distinct images finished, by result (processed, failed) and "
                                "failure code.", None),
    "images_reused_total": ("counter", "Processed images whose outputs were copied from an "
                                       "earlier batch's, by how the image was known unchanged "
                                       "(not_modified: a 304; same_bytes: the same SHA-256).",
                            None),
    "image_bytes_total": ("counter", "Image bytes downloaded (in) and stored (out).", None),
    "image_bytes_saved_total": ("counter", "Bytes by which processed images' outputs are "
                                           "smaller than their inputs.", None),
    "download_seconds": ("histogram", "Time to download one image.", DOWNLOAD_BUCKETS),
    "encode_seconds": ("histogram", "Time to decode and re-encode one image.", ENCODE_BUCKETS),
    "host_throttled_total": ("counter", "Throttle answers from image hosts (429, or 503 with "
                                        "Retry-After), by status.", None),
    "host_slowdowns_total": ("counter", "Times a host's allowed download concurrency was "
                                        "halved after it throttled.", None),
    "image_deferrals_total": ("counter", "Images put back to wait (left pending, the chunk "
                                         "queued again), by reason.", None),
    "webhook_attempts_total": ("counter", "Webhook delivery attempts, by outcome.", None),
    "worker_cpu_seconds_total": ("counter", "CPU seconds of the image pipeline's threads, by "
                                 "step: download, hash, encode (decode, resize, encode), store "
                                 "(S3 puts), record (the store's updates); image (all of an "
                                 "image's work, those steps included), chunk (a chunk job's "
                                 "own thread: reading the chunk, host slots, dispatch) and parse "
                                 "(reading a batch's file into the store).", None),
    "webhook_seconds": ("histogram", "Duration of one webhook delivery attempt.",
                        WEBHOOK_BUCKETS),
}

# --- recording (any process) --------------------------------------------------------------------

def _field(name: str, labels: dict[str, str] | None = None) -> str:
    if not labels:
        return name + "|"
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _incr(items: list[tuple[str, float]]) -> None:
    """Add each (field, amount) to the Redis hash in one round trip; never raises."""
    try:
        from infra import queues
        pipe = queues.get_redis().pipeline(transaction=False)
        for field, amount in items:
            if amount:
                pipe.hincrbyfloat(REDIS_KEY, field, amount)
        pipe.execute()
    except Exception as error:  # noqa: BLE001 - metrics must never break the work
        log.debug("could not record metrics: %s", error)


_deferred = threading.local()


def _record(items: list[tuple[str, float]]) -> None:
    """Write now, or add to the thread's pending writes inside `deferred()`."""
    pending = getattr(_deferred, "items", None)
    if pending is None:
        _incr(items)
    else:
        pending.extend(items)


def _totals(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The items summed per field: one command each in the pipeline."""
    totals: dict[str, float] = {}
    for field, amount in items:
        totals[field] = totals.get(field, 0) + amount
    return list(totals.items())


def batch(interval_s: float = 1.0) -> Batch:
    """A Batch for `deferred(into=…)`: the metrics of several threads' blocks (a chunk's
    images), one pipeline at most every `interval_s` and at its `flush()`."""
    return Batch(lambda items: _incr(_totals(items)), interval_s)


@contextlib.contextmanager
def deferred(into: Batch | None = None) -> Iterator[None]:
    """Hold this thread's metric writes and send them in one pipeline at the end (also when the
    block raises), e.g. one round trip per image instead of one per observation; `into`: hand
    them to that Batch instead. Nested blocks join the outer one."""
    if getattr(_deferred, "items", None) is not None:
        yield
        return
    _deferred.items = []
    try:
        yield
    finally:
        items, _deferred.items = _deferred.items, None
        if items and into is not None:
            into.add(items)
        elif items:
            _incr(_totals(items))


def inc(name: str, amount: float = 1, **labels: str) -> None:
    """Add to a pipeline counter, e.g. `inc("batches_finished_total", status="completed")`."""
    if name not in PIPELINE:
        raise KeyError(f"unknown metric {name!r}")
    _record([(_field(name, labels), amount)])


def observe(name: str, seconds: float, **labels: str) -> None:
    """Record one observation in a pipeline histogram."""
    kind, _, buckets = PIPELINE[name]
    if kind != "histogram":
        raise KeyError(f"{name!r} is not a histogram")
    items = [(_field(name + "_count", labels), 1), (_field(name + "_sum", labels), seconds)]
    # Only the bucket the value falls in (none above the last bound: `_count` is `+Inf`); the
    # scrape adds them up into Prometheus' cumulative buckets.
    for bound in buckets:
        if seconds <= bound:
            items.append((_field(name + BIN_SUFFIX, {**labels, "le": repr(float(bound))}), 1))
            break
    _record(items)


@contextlib.contextmanager
def cpu_step(step: str) -> Iterator[None]:
    """Count the CPU time this thread spends in the block (also when it raises) in
    `worker_cpu_seconds_total{step}`: where a worker's CPU goes, per step, on any machine."""
    started = time.thread_time()
    try:
        yield
    finally:
        inc("worker_cpu_seconds_total", time.thread_time() - started, step=step)


def timed(name: str, function: Callable[..., T], *args, **kwargs) -> T:
    """Call `function(*args, **kwargs)` and observe how long it took (also when it raises)."""
    started = time.perf_counter()
    try:
        return function(*args, **kwargs)
    finally:
        observe(name, time.perf_counter() - started)


# Named helpers, one line at each call site.

def batch_created() -> None:
    inc("batches_created_total")


def batch_finished(status: str) -> None:
    inc("batches_finished_total", status=str(status))


def rows_parsed(accepted: int, rejected: int) -> None:
    _record([(_field("rows_total", {"result": "accepted"}), accepted),
           (_field("rows_total", {"result": "rejected"}), rejected)])


def image_processed(bytes_in: int | None, bytes_out: int | None) -> None:
    saved = max((bytes_in or 0) - (bytes_out or 0), 0)  # a counter never goes down
    _record([(_field("images_total", {"result": "processed", "reason": ""}), 1),
           (_field("image_bytes_total", {"direction": "in"}), bytes_in or 0),
           (_field("image_bytes_total", {"direction": "out"}), bytes_out or 0),
           (_field("image_bytes_saved_total"), saved)])


def image_reused(how: str, bytes_in: int) -> None:
    """A processed image whose outputs were copied, not encoded (also one processed image);
    `bytes_in`: what was downloaded (0 after a 304). Nothing was stored, nothing saved anew."""
    _record([(_field("images_total", {"result": "processed", "reason": ""}), 1),
             (_field("images_reused_total", {"how": how}), 1),
             (_field("image_bytes_total", {"direction": "in"}), bytes_in)])


def image_failed(code: str, bytes_in: int | None = None) -> None:
    """A failed image, labelled by its FailureCode (a small, fixed set of label values)."""
    _record([(_field("images_total", {"result": "failed", "reason": str(code)}), 1),
           (_field("image_bytes_total", {"direction": "in"}), bytes_in or 0)])


def host_throttled(status: int | None) -> None:
    """A 429 or 503 answer asking to come back later; labelled by status only (host names
    would make the label set grow without bound)."""
    inc("host_throttled_total", status=str(status or ""))


def host_slowed_down() -> None:
    inc("host_slowdowns_total")


def image_deferred(reason: str) -> None:
    """An image put back to wait: `throttled` (its own 429/503), `host_paused` (its host's),
    `host_busy` (no free slot for too long), `retry_backoff` (a retry's wait too long)."""
    inc("image_deferrals_total", reason=reason)


def webhook_attempt(outcome: str, seconds: float | None = None) -> None:
    """outcome: `success`, `http_error` (non-2xx), `timeout`, `connection_error`, `refused`."""
    with deferred():
        inc("webhook_attempts_total", outcome=outcome)
        if seconds is not None:
            observe("webhook_seconds", seconds, outcome=outcome)


def webhook_outcome(outcome: dict) -> str:
    """The outcome label of one `worker.webhook_delivery.send()` result."""
    code = outcome.get("status_code")
    error = str(outcome.get("error") or "")
    if code is not None:
        if 200 <= code < 300 and not error:
            return "success"
        return "redirect" if 300 <= code < 400 else "http_error"
    if error.startswith("refused"):
        return "refused"
    if "timed out" in error or "timeout" in error:
        return "timeout"
    return "connection_error"


def webhook_sent(outcome: dict) -> None:
    """Count one delivery attempt from `send()`'s result dict (one line after it returns)."""
    seconds = outcome.get("duration_ms")
    webhook_attempt(webhook_outcome(outcome), None if seconds is None else seconds / 1000)


# --- API process metrics (prometheus_client) ----------------------------------------------------

def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


HTTP_REQUESTS = Counter(f"{NAMESPACE}_http_requests_total", "HTTP requests answered.",
                        ["method", "endpoint", "status"])
HTTP_SECONDS = Histogram(f"{NAMESPACE}_http_request_seconds", "Time to answer an HTTP request.",
                         ["method", "endpoint"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                  30.0))


def http_request(method: str, endpoint: str | None, status: int, seconds: float) -> None:
    endpoint = endpoint or "unmatched"
    try:
        HTTP_REQUESTS.labels(method, endpoint, str(status)).inc()
        HTTP_SECONDS.labels(method, endpoint).observe(seconds)
    except Exception as error:  # noqa: BLE001
        log.debug("could not record HTTP metrics: %s", error)


# --- scrape-time collectors ---------------------------------------------------------------------

def parse_field(field: str) -> tuple[str, dict[str, str]]:
    """A Redis field of REDIS_KEY (`name|label=value,...`): the name and its labels."""
    name, _, raw = field.partition("|")
    labels = {}
    for part in raw.split(",") if raw else ():
        key, _, value = part.partition("=")
        labels[key] = value
    return name, labels


class PipelineCollector(Collector):
    """Reads the pipeline metrics every worker recorded in Redis."""

    def collect(self):
        from infra import queues
        try:
            raw = queues.get_redis().hgetall(REDIS_KEY)
        except Exception as error:  # noqa: BLE001 - a scrape still shows the API metrics
            log.warning("could not read pipeline metrics from Redis: %s", error)
            raw = {}
        values: dict[str, list[tuple[dict[str, str], float]]] = {}
        for field, value in raw.items():
            field = field.decode() if isinstance(field, bytes) else field
            name, labels = parse_field(field)
            values.setdefault(name, []).append((labels, float(value)))
        for name, (kind, help_text, buckets) in PIPELINE.items():
            full = f"{NAMESPACE}_{name}"
            if kind == "counter":
                samples = values.get(name, [])
                label_names = sorted({k for labels, _ in samples for k in labels})
                family = CounterMetricFamily(full.removesuffix("_total"), help_text,
                                             labels=label_names)
                for labels, value in samples:
                    family.add_metric([labels.get(k, "") for k in label_names], value)
                yield family
                continue
            yield from _histograms(full, help_text, buckets, name, values)


def _histograms(full: str, help_text: str, buckets, name: str, values):
    series: dict[tuple, dict] = {}
    for labels, value in values.get(name + "_count", []):
        series.setdefault(tuple(sorted(labels.items())), {})["count"] = value
    for labels, value in values.get(name + "_sum", []):
        series.setdefault(tuple(sorted(labels.items())), {})["sum"] = value
    for suffix, kind in (("_bucket", "le"), (BIN_SUFFIX, "bin")):
        for labels, value in values.get(name + suffix, []):
            le = labels.pop("le", None)
            if le is not None:
                data = series.setdefault(tuple(sorted(labels.items())), {})
                data.setdefault(kind, {})[le] = value
    label_names = sorted({k for key in series for k, _ in key})
    family = HistogramMetricFamily(full, help_text, labels=label_names)
    for key, data in series.items():
        labels = dict(key)
        per_bound, per_bin = data.get("le", {}), data.get("bin", {})
        cumulative, running = [], 0.0
        for bound in buckets:
            le = repr(float(bound))
            running += per_bin.get(le, 0.0)
            cumulative.append((le, per_bound.get(le, 0.0) + running))
        cumulative.append(("+Inf", data.get("count", 0.0)))
        family.add_metric([labels.get(k, "") for k in label_names], cumulative,
                          sum_value=data.get("sum", 0.0))
    yield family


class QueueCollector(Collector):
    """Jobs per queue and state, and the number of workers, read from RQ at scrape time."""

    def collect(self):
        from rq import Queue, Worker
        from rq.registry import (DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry,
                                 StartedJobRegistry)

        from infra import queues
        jobs = GaugeMetricFamily(f"{NAMESPACE}_queue_jobs", "Jobs in each RQ queue, by state.",
                                 labels=["queue", "state"])
        workers = GaugeMetricFamily(f"{NAMESPACE}_rq_workers", "RQ workers registered.")
        try:
            conn = queues.get_redis()
            for name in queues.ALL_QUEUES:
                queue = Queue(name, connection=conn)
                jobs.add_metric([name, "queued"], queue.count)
                for state, registry in (("started", StartedJobRegistry),
                                        ("scheduled", ScheduledJobRegistry),
                                        ("deferred", DeferredJobRegistry),
                                        ("failed", FailedJobRegistry)):
                    jobs.add_metric([name, state], registry(queue=queue).count)
            workers.add_metric([], Worker.count(connection=conn))
        except Exception as error:  # noqa: BLE001
            log.warning("could not read queue depths: %s", error)
            return
        yield jobs
        yield workers


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of everything above."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry = _SingleProcess(REGISTRY)
    registry.register(PipelineCollector())
    registry.register(QueueCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _SingleProcess(CollectorRegistry):
    """The default registry's metrics plus the scrape-time collectors, without mutating it."""

    def __init__(self, base: CollectorRegistry):
        super().__init__(auto_describe=False)
        self._base = base

    def collect(self):
        yield from self._base.collect()
        yield from super().collect()
