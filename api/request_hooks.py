"""Per-request hooks: accept or make up X-Request-ID, echo it, log one access line, count it."""
from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, g, request

from infra import logging_setup, metrics

REQUEST_ID_HEADER = "X-Request-ID"
_QUIET = {"/healthz", "/readyz", "/metrics"}


def _valid_request_id(value: str | None) -> str | None:
    """A client's id, when it is short, plain ASCII and holds nothing redaction would hide (it is
    echoed and logged as sent); else None, and one is made up."""
    if value and len(value) <= 128 and value.isascii() \
            and all(c.isalnum() or c in "-_.:" for c in value) \
            and logging_setup.redact(value) == value:
        return value
    return None


def register(app: Flask) -> None:
    """Install the hooks on `app` (first, so every later hook and error has the request id)."""
    access = logging.getLogger("batchpress.access")

    @app.before_request
    def _request_started():
        g.request_id = _valid_request_id(request.headers.get(REQUEST_ID_HEADER)) \
            or uuid.uuid4().hex
        g.request_started = time.perf_counter()
        logging_setup.request_id_var.set(g.request_id)

    @app.after_request
    def _request_finished(response):
        request_id = g.get("request_id")
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("request_started")
        seconds = time.perf_counter() - started if started else 0.0
        rule = request.url_rule.rule if request.url_rule is not None else None
        metrics.http_request(request.method, rule, response.status_code, seconds)
        level = logging.DEBUG if request.path in _QUIET or request.path.startswith(
            ("/docs/", "/rq/static/")) else logging.INFO
        access.log(level, "%s %s %s", request.method, request.path, response.status_code,
                   extra={"method": request.method, "path": request.path,
                          "route": rule, "status": response.status_code,
                          "duration_ms": round(seconds * 1000, 2),
                          "owner": g.get("owner"), "remote_addr": request.remote_addr})
        return response

    @app.teardown_request
    def _request_done(_error=None):
        logging_setup.request_id_var.set(None)
