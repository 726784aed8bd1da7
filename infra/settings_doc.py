"""The settings table of docs/settings.md, generated from `Settings` so that it cannot drift.

`python -m infra.settings_doc > docs/settings.md` rewrites it; a test fails when they differ.
"""
from __future__ import annotations

import inspect
import sys

from pydantic.fields import FieldInfo

from infra.settings import Settings

HEADER = """\
# Settings

<!-- Generated from infra/settings.py by `python -m infra.settings_doc > docs/settings.md`:
edit the docstrings there, not this file. -->

Every setting is an environment variable (a `.env` file in the working directory is read
too; names are case-insensitive). A bad value stops the service at start-up with one line per
variable naming it and what is wrong (exit status 2), never a traceback.

Variables read by other programs, not by the service: gunicorn's (`WEB_CONCURRENCY`,
`GUNICORN_*`, `FORWARDED_ALLOW_IPS`, `PROMETHEUS_MULTIPROC_DIR`) are in
[operations](operations.md#gunicorn), the command line's (`BATCHPRESS_URL`,
`BATCHPRESS_API_KEY`) in the [README](../README.md#the-command-line-batchpress), the tests'
(`MONGO_URL` for a real MongoDB, `CHROMIUM`, `UPDATE_SCREENSHOT`) in [testing](testing.md).

| Variable | Default | Allowed | Meaning |
|---|---|---|---|
"""

KINDS = {int: "whole number", float: "number", bool: "`true` or `false`", str: "text"}


def _kind(field: FieldInfo) -> str:
    """The value's kind, from its annotation (`str | None` is text that may be unset)."""
    annotation = field.annotation
    for kind, word in KINDS.items():
        if annotation is kind or kind in getattr(annotation, "__args__", ()):
            return word
    return str(annotation)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value}"


def _bounds(field: FieldInfo) -> str:
    """The range a value must fall in, from the field's constraints (`ge`, `le`, lengths)."""
    found = {key: getattr(item, key) for item in field.metadata
             for key in ("ge", "gt", "le", "min_length", "max_length") if hasattr(item, key)}
    if "min_length" in found or "max_length" in found:
        low, high = found.get("min_length"), found.get("max_length")
        if low == 1 and high is None:
            return "not empty"
        return f"{low}–{high} characters" if low and high else (
            f"≥ {low} characters" if low else f"≤ {high} characters")
    high = f"{_number(found['le'])}" if "le" in found else ""
    if "gt" in found:
        return f"> {_number(found['gt'])}" + (f", ≤ {high}" if high else "")
    if "ge" in found:
        low = _number(found["ge"])
        return f"{low}–{high}" if high else f"≥ {low}"
    return f"≤ {high}" if high else ""


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "random per process"
    value = field.default
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(inspect.cleandoc(text).split()).replace("|", "\\|")


def render(settings_class: type[Settings] = Settings) -> str:
    """docs/settings.md: the header, then one row per field of the settings, in source order."""
    rows = []
    for name, field in settings_class.model_fields.items():
        if not field.description:
            raise ValueError(f"Settings.{name} has no docstring: add one saying what it does")
        allowed = ", ".join(filter(None, (_kind(field), _bounds(field))))
        rows.append(f"| `{name.upper()}` | {_default(field)} | {allowed} | "
                    f"{_cell(field.description)} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
