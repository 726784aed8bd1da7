"""Logs: one JSON object a line, with the request id, batch id and job id of the event's context.

`configure(settings)` sets up the root logger once per process (API, gunicorn workers, RQ
workers). Every record passes through `ContextFilter`, which adds `request_id` (from the
`X-Request-ID` the API accepted or made up), `batch_id` and `job_id` (from the RQ job being run),
and `RedactFilter`, which strips secrets from the message and from every other text field: query
strings and credentials in URLs, bearer tokens, `whsec_` secrets and the configured API keys
(read by the same parser as authentication, whether listed inline or in a file).
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import threading
from datetime import datetime, timezone

from infra.api_keys import ApiKeyError, read_entries

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                           default=None)
batch_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_id", default=None)

# Attributes every LogRecord has; anything else passed as `extra=` is printed as a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_CONTEXT_FIELDS = ("request_id", "batch_id", "job_id")

_URL_QUERY = re.compile(r"(?P<url>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s'\"<>]*")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@'\"<>]+@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_WHSEC = re.compile(r"whsec_[A-Za-z0-9+/=]+")
_SECRET_PARAM = re.compile(
    r"(?i)\b(password|passwd|secret|token|api[_-]?key|authorization)(\"?\s*[:=]\s*\"?)[^\s,&\"']+")

_lock = threading.Lock()
_state: dict = {"configured": False, "literals": ()}


def redact(text: str) -> str:
    """The text without query strings, URL credentials, bearer tokens, secrets or API keys."""
    if not text:
        return text
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    text = _URL_QUERY.sub(r"\g<url>?…", text)
    text = _BEARER.sub(lambda m: m.group(1) + " ***", text)
    text = _WHSEC.sub("whsec_***", text)
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    for literal in _state["literals"]:
        if literal in text:
            text = text.replace(literal, "***")
    return text


def set_secret_literals(values) -> None:
    """Exact strings never to print (the API keys, the dashboard password)."""
    _state["literals"] = tuple(sorted({v for v in values if v and len(v) >= 6}, key=len,
                                      reverse=True))


def _current_job():
    try:
        from rq import get_current_job
        return get_current_job()
    except Exception:  # noqa: BLE001 - outside a job, or no connection
        return None


class ContextFilter(logging.Filter):
    """Adds request_id, batch_id and job_id to every record that lacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = None
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
            if record.request_id is None:  # in a job: the request that queued it, if recorded
                job = _current_job()
                meta = getattr(job, "meta", None) if job is not None else None
                record.request_id = meta.get("request_id") if isinstance(meta, dict) else None
        if getattr(record, "job_id", None) is None:
            job = job or _current_job()
            record.job_id = job.id if job is not None else None
        if getattr(record, "batch_id", None) is None:
            batch_id = batch_id_var.get()
            if batch_id is None:
                job = job or _current_job()
                if job is not None:
                    try:
                        args = job.args
                    except Exception:  # noqa: BLE001 - undecodable job data
                        args = ()
                    if args and isinstance(args[0], str):
                        batch_id = args[0]
            record.batch_id = batch_id
        return True


class RedactFilter(logging.Filter):
    """Renders the message once, redacted, and redacts every other text field of the record
    (context ids, `extra=` values), so neither formatter can print a secret from any of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string still gets logged
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        for name, value in vars(record).items():
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, context and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            body[name] = getattr(record, name, None)
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in body and not name.startswith("_"):
                body[name] = value if isinstance(value, (int, float, bool, type(None))) \
                    else redact(str(value))
        if record.exc_info:
            body["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            body["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(body, ensure_ascii=False, default=str).translate(_JSON_LINE_BREAKS)


# Line breaks and other control characters a client can put in a logged value (a request path
# with %0a or %00): in a text log they would start a line of the client's making. A backslash is
# escaped too, so that a `\n` the client typed is not read as one of these escapes.
_CONTROL = re.compile(r"[\\\x00-\x1f\x7f\x85\u2028\u2029]")
# JSON's encoding escapes \x00-\x1f; these other line breaks and DEL it leaves as they are.
_JSON_LINE_BREAKS = {0x7f: "\\u007f", 0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape_controls(text: str) -> str:
    """`text` on one line: each control character (and backslash) written as an escape."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """One line a record, then a traceback's lines, indented: every line that starts in the
    first column is a record's, as no value can break a line (escape_controls)."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s %(batch_id)s "
                         "%(job_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # Not a traceback another handler formatted and cached on the record: this one's own.
        cached, record.exc_text = record.exc_text, None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    """A traceback's lines, each escaped, all but its first (`Traceback …`) indented."""
    return "\n    ".join(escape_controls(line) for line in text.split("\n"))


def make_handler(fmt: str = "json", stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._batchpress = True  # type: ignore[attr-defined]
    return handler


def configure(settings=None, *, force: bool = False) -> None:
    """Send every log record of this process through one JSON (or text) handler on stderr."""
    if settings is None:
        from infra.settings import get_settings
        settings = get_settings()
    secrets = [settings.dashboard_password, settings.webhook_secret]
    try:
        secrets += [key for _name, key in read_entries(settings.api_keys)]
    except ApiKeyError:  # the API refuses to start on it, naming the problem
        pass
    set_secret_literals(secrets)
    with _lock:
        root = logging.getLogger()
        root.setLevel(settings.log_level)
        ours = [h for h in root.handlers if getattr(h, "_batchpress", False)]
        if ours and not force:
            return
        for handler in list(root.handlers):  # basicConfig's or an earlier one of ours;
            if getattr(handler, "_batchpress", False) or type(handler) is logging.StreamHandler:
                root.removeHandler(handler)    # test runners' capture handlers stay
        root.addHandler(make_handler(settings.log_format))
        # Libraries that add handlers of their own would print twice; send them through ours.
        for name in ("rq.worker", "rq.scheduler", "gunicorn.error"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
        logging.getLogger("werkzeug").setLevel(max(logging.WARNING, root.level))
        _state["configured"] = True
