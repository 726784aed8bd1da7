"""Error answers: every failure becomes an RFC 9457 application/problem+json body, never a traceback."""
from __future__ import annotations

import logging

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE = "/problems/"


class ApiError(Exception):
    """Raise anywhere in a request to answer with a problem body."""

    def __init__(self, status: int, title: str, detail: str | None = None, *,
                 kind: str | None = None, headers: dict | None = None, **extra):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


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


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return problem(error.status, error.title, error.detail, kind=error.kind,
                       headers=error.headers, **error.extra)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        headers = dict(error.get_headers())
        headers.pop("Content-Type", None)
        detail = error.description
        if error.code == 413:
            from infra.settings import get_settings
            detail = f"the upload is larger than MAX_UPLOAD_BYTES ({get_settings().max_upload_bytes} bytes)"
        return problem(error.code or 500, error.name, detail,
                       kind=error.name.lower().replace(" ", "-"), headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error",
                       "something went wrong on our side; it has been logged", kind="internal")
