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
        # A path no route serves answers its 404, whatever its query.
        if request.method not in ("GET", "HEAD") or not request.path.startswith("/api/") \
                or request.url_rule is None:
            return
        for name, values in request.args.lists():
            try:
                one_value(values)
            except ValueError as error:
                raise ApiError(400, "Invalid parameter", f"{quoted(name)} {error}",
                               kind="invalid-parameter", parameter=name) from None


def one_value(values: list):
    """The one value of a parameter or field, None when absent; ValueError when given more
    than once (the rule for queries here and for upload fields, api/batches.py)."""
    if len(values) > 1:
        raise ValueError(f"given more than once ({len(values)} values); send it once")
    return values[0] if values else None
