"""Error answers: every failure becomes an RFC 9457 application/problem+json body, never a traceback."""
from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from schemas.quoting import quoted

log = logging.getLogger(__name__)

PROBLEM_TYPE = "/problems/"
# One 413 problem, whether Flask's MAX_CONTENT_LENGTH or the upload's streaming cap
# (api/batches.py _too_large) refuses it.
TOO_LARGE_TITLE, TOO_LARGE_KIND = "Upload too large", "too-large"


class ApiError(Exception):
    """Raise anywhere in a request to answer with a problem body."""

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 kind: str | None = None, headers: dict | None = None, **extra):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


def not_found(what: str, ident: str | None = None) -> ApiError:
    """The one 404 of the API: `raise not_found("batch", batch_id)`. Another owner's ids answer
    exactly like ids that do not exist."""
    detail = f"no {what} with id {quoted(ident)}" if ident is not None else f"no such {what}"
    return ApiError(404, "Not Found", detail, kind="not-found")


def problem(status: int, title: str, detail: str | None = None, *, kind: str | None = None,
            headers: dict | None = None, **extra) -> Response:
    body = {"type": PROBLEM_TYPE + (kind or title.lower().replace(" ", "-")), "title": title,
            "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.path
    body.update({k: v for k, v in extra.items() if v is not None})
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def unavailable(service: str, detail: str | None = None) -> ApiError:
    """503 naming the outside service (MongoDB, Redis, S3) that did not answer."""
    return ApiError(503, "Service Unavailable",
                    detail or f"{service} is not reachable right now; try again",
                    kind="dependency-unavailable", headers={"Retry-After": "30"}, service=service)


def _unavailable_handler(service: str):
    def handle(error: Exception):
        log.error("%s unreachable on %s %s: %s", service, request.method, request.path,
                  str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        answer = unavailable(service)
        return problem(answer.status, answer.title, answer.detail, kind=answer.kind,
                       headers=answer.headers, **answer.extra)
    return handle


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return problem(error.status, error.title, error.detail, kind=error.kind,
                       headers=error.headers, **error.extra)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        headers = dict(error.get_headers())
        headers.pop("Content-Type", None)
        detail, title, kind = error.description, error.name, error.name.lower().replace(" ", "-")
        if error.code == 413:  # MAX_CONTENT_LENGTH: the same problem as the streaming cap's
            from api import app_settings
            title, kind = TOO_LARGE_TITLE, TOO_LARGE_KIND
            detail = (f"the file is larger than MAX_UPLOAD_BYTES "
                      f"({app_settings().max_upload_bytes} bytes)")
        return problem(error.code or 500, title, detail, kind=kind, headers=headers)

    # A store that is down answers 503 naming it on every endpoint, not only on uploads.
    from botocore.exceptions import BotoCoreError
    from pymongo.errors import PyMongoError
    from redis.exceptions import RedisError

    from sqlite3 import OperationalError as SqliteError  # locked past busy_timeout, disk full

    for error_class, service in ((PyMongoError, "MongoDB"), (RedisError, "Redis"),
                                 (BotoCoreError, "S3"), (SqliteError, "SQLite")):
        app.register_error_handler(error_class, _unavailable_handler(service))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error",
                       "something went wrong on our side; it has been logged", kind="internal")
