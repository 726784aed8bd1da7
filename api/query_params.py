"""One value per query parameter on the API's reads: `?bom=yes&bom=no`, read as its first value,
would answer what was only half asked for. An upload's options have their own rule, in its own
words (api/batches.py `_option`)."""
from __future__ import annotations

from flask import Flask, request

from api.errors import ApiError
from schemas.quoting import quoted


def register(app: Flask) -> None:
    """After authentication: a caller without a key learns nothing from the query's shape."""

    @app.before_request
    def _one_value_each():
        if request.method not in ("GET", "HEAD") or not request.path.startswith("/api/"):
            return
        for name, values in request.args.lists():
            if len(values) > 1:
                raise ApiError(400, "Invalid parameter",
                               f"{quoted(name)} given more than once ({len(values)} values); "
                               "send it once", kind="invalid-parameter", parameter=name)
