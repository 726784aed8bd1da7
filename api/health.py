"""Health, readiness and metrics endpoints outside /api/v1.

- `/healthz`: the process answers; no I/O at all.
- `/readyz`: pings Redis, MongoDB and S3 at once, each with a short timeout (`READY_TIMEOUT_S`);
  `503` problem+json naming every one that failed.
- `/metrics`: Prometheus text (see infra/metrics.py).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait

from flask import Blueprint, Response, jsonify

from api import app_settings
from api.errors import problem
from infra import db, metrics, queues, storage, stores
from infra.per_process import per_process
from infra.settings import get_settings

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    checks = run_checks(app_settings().ready_timeout_s)
    failed = {name: error for name, error in checks.items() if error is not None}
    report = {name: ("ok" if error is None else error) for name, error in checks.items()}
    if failed:
        names = ", ".join(failed)
        detail = "; ".join(f"{name}: {error}" for name, error in failed.items())
        log.warning("not ready: %s", detail)
        return problem(503, "Not Ready", f"not reachable: {names} ({detail})", kind="not-ready",
                       headers={"Retry-After": "5"}, failed=list(failed), checks=report)
    return jsonify({"status": "ready", "checks": report})


@bp.get("/metrics")
def metrics_endpoint():
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


# --- readiness checks ---------------------------------------------------------------------------

# One short-timeout client per process and target (clients must not cross a fork).
@per_process
def _short_redis(url: str, timeout: float):
    import redis
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                retry_on_timeout=False)


@per_process
def _short_mongo(url: str, timeout: float):
    import pymongo
    ms = int(timeout * 1000)
    return pymongo.MongoClient(url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
                               socketTimeoutMS=ms, maxPoolSize=2)


@per_process
def _short_s3(endpoint: str, timeout: float):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name=get_settings().s3_region,
                        config=Config(connect_timeout=timeout, read_timeout=timeout,
                                      retries={"max_attempts": 1, "mode": "standard"},
                                      s3={"addressing_style": "path"}))


def check_redis(timeout: float) -> None:
    settings = get_settings()
    conn = queues.get_redis()
    pool = getattr(conn, "connection_pool", None)
    real = pool is not None and type(conn).__module__.startswith("redis") and settings.redis_url
    if real:
        conn = _short_redis(settings.redis_url, timeout)
    if not conn.ping():
        raise RuntimeError("PING did not answer PONG")


def check_mongo(timeout: float) -> None:
    settings = get_settings()
    client = db.get_client()
    import pymongo
    if isinstance(client, pymongo.MongoClient) and settings.mongo_url:
        client = _short_mongo(settings.mongo_url, timeout)
    try:
        client.admin.command("ping")
    except NotImplementedError:  # an in-memory stand-in without `ping`: reading is proof enough
        client[settings.mongo_db].list_collection_names()


def check_s3(timeout: float) -> None:
    settings = get_settings()
    endpoint = storage.get_s3().meta.endpoint_url
    _short_s3(endpoint, timeout).head_bucket(Bucket=settings.s3_bucket)


CHECKS = {"redis": check_redis, "mongodb": check_mongo, "s3": check_s3}


def check_store(timeout: float) -> None:
    stores.current().ping()


def check_folder(timeout: float) -> None:
    storage.ping()


def current_checks() -> dict:
    """What this process depends on: Redis, the stores' database and the object store (SQLite
    and the object folder in the embedded default, named so)."""
    name = stores.current().name
    database = {"mongodb": check_mongo} if name == "mongodb" else {name: check_store}
    objects = {"files": check_folder} if storage.folder() else {"s3": check_s3}
    return {"redis": check_redis, **database, **objects}


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = metrics_safe(text)
    return f"{type(error).__name__}: {text}"[:200] if text else type(error).__name__


def metrics_safe(text: str) -> str:
    """Strip credentials and query strings a driver may echo (e.g. a URL with a password)."""
    from infra.logging_setup import redact
    return redact(text)


@per_process
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


def run_checks(timeout: float, checks: dict | None = None) -> dict[str, str | None]:
    """Each dependency's failure as text, or None when it answered; all checked at once."""
    started = time.monotonic()
    futures = {name: _executor().submit(check, timeout)
               for name, check in (checks or current_checks()).items()}
    wait(futures.values(), timeout=timeout + 0.5)
    results: dict[str, str | None] = {}
    for name, future in futures.items():
        if not future.done():
            results[name] = f"no answer within {timeout:g} s"
            continue
        error = future.exception()
        results[name] = None if error is None else _describe(error)
    log.debug("readiness checked in %.3f s", time.monotonic() - started)
    return results
