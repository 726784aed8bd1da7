"""JSON logs (infra/logging_setup.py, api/request_hooks.py): request and job ids, no secrets."""
from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
import threading
from contextlib import contextmanager

import pytest

from infra import queues, settings as settings_module
from tests.helpers import bearer, log_in_a_job, make_app
from tests.test_flow import upload


@pytest.fixture()
def json_logs():
    """Every log record of the test as parsed JSON lines, through the service's own handler."""
    from infra import logging_setup
    stream = io.StringIO()
    handler = logging_setup.make_handler("json", stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_request_id_is_accepted_or_made_and_echoed(client, json_logs):
    response = client.get("/healthz", headers={"X-Request-ID": "req-42.abc"})
    assert response.headers["X-Request-ID"] == "req-42.abc"
    made = client.get("/api/v1/batches").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz", headers={
        "X-Request-ID": "x" * 200}).headers["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"])
    access = [line for line in json_logs() if line["logger"] == "batchpress.access"]
    assert {"req-42.abc", made} <= {line["request_id"] for line in access}
    line = next(item for item in access if item["request_id"] == made)
    assert line["status"] == 200 and line["path"] == "/api/v1/batches"
    assert line["level"] == "INFO" and line["time"].endswith("Z") and "duration_ms" in line


def test_error_logs_carry_the_request_id(client, json_logs):
    response = client.post("/api/v1/batches", data=b"\x00\x01", content_type="text/csv",
                           headers={"X-Request-ID": "rid-415"})
    assert response.status_code == 415
    assert any(line["request_id"] == "rid-415" and line.get("status") == 415
               for line in json_logs())


def test_worker_logs_carry_batch_and_job_ids(client, work, json_logs):
    batch_id = upload(client, "S. No.,Product Name,Input Image Urls\n1,,http://x/y.jpg\n") \
        .get_json()["id"]
    work()
    finished = [line for line in json_logs() if line["message"] == "batch finished"]
    assert finished, json_logs()
    assert finished[0]["batch_id"] == batch_id
    assert finished[0]["job_id"] == f"{batch_id}-parse"


def test_job_logs_carry_the_request_id_that_queued_them(env, work, json_logs):
    queues.get_queue("batches").enqueue(log_in_a_job, "bat_meta", job_id="bat_meta-x",
                                        meta={"request_id": "rid-from-upload"})
    work()
    line = next(item for item in json_logs() if item["message"] == "inside the job")
    assert line["request_id"] == "rid-from-upload"
    assert line["job_id"] == "bat_meta-x" and line["batch_id"] == "bat_meta"


def test_logs_carry_no_secrets(json_logs):
    from infra import logging_setup
    logging_setup.set_secret_literals(["ak_super_secret_key"])
    log = logging.getLogger("batchpress.test")
    log.warning("fetch %s failed", "https://user:pw@img.example.com/a.jpg?X-Amz-Signature=abc&t=1")
    log.warning("header was Authorization: Bearer ak_super_secret_key, secret whsec_QUJDRA==")
    log.info("plain", extra={"batch_id": "b1", "url": "https://e.com/x?token=zzz"})
    lines = json_logs()
    text = json.dumps(lines)
    for secret in ("X-Amz-Signature", "abc&t", "pw@", "ak_super_secret_key", "QUJDRA", "zzz"):
        assert secret not in text, secret
    assert "https://***@img.example.com/a.jpg?" in lines[0]["message"]
    assert lines[2]["batch_id"] == "b1" and lines[2]["level"] == "INFO"
    logging_setup.set_secret_literals([])


@pytest.fixture(params=["inline", "file"])
def keyed_app(request, env, monkeypatch, tmp_path):
    """An app with one API key, given inline or in a file (both must be kept out of logs)."""
    if request.param == "inline":
        value = "dora:dk_0123456789secret"
    else:
        path = tmp_path / "keys"
        path.write_text("# keys\ndora: dk_0123456789secret\n")
        value = str(path)
    yield make_app(monkeypatch, API_KEYS=value)
    from infra import logging_setup
    logging_setup.set_secret_literals([])


def test_api_keys_in_paths_and_malformed_request_lines_never_reach_the_logs(keyed_app, json_logs):
    from werkzeug.serving import make_server
    key = "dk_0123456789secret"
    client = keyed_app.test_client()
    assert client.get(f"/api/v1/batches/{key}", headers=bearer(key)).status_code == 404
    server = make_server("127.0.0.1", 0, keyed_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:  # a request line a browser would never send: the server logs it as it came
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            conn.sendall(f"GET /{key} x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert b" 400 " in conn.recv(65536)
    finally:
        server.shutdown()
    lines = json_logs()
    assert any("/api/v1/batches/***" in line["message"] for line in lines), lines
    assert any("Bad request syntax ('GET /*** x" in line["message"] for line in lines), lines
    assert key not in json.dumps(lines)


def test_a_request_id_holding_a_key_is_neither_echoed_nor_logged(keyed_app, json_logs):
    key = "dk_0123456789secret"
    response = keyed_app.test_client().get(
        "/api/v1/batches", headers={**bearer(key), "X-Request-ID": key})
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert key not in json.dumps(json_logs())


@contextmanager
def _logged(fmt: str, name: str):
    """A logger of its own, through the service's handler in `fmt`; yields (logger, stream)."""
    from infra import logging_setup
    stream = io.StringIO()
    handler = logging_setup.make_handler(fmt, stream)
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.propagate = False
    try:
        yield log, stream
    finally:
        log.removeHandler(handler)
        log.propagate = True


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_field_of_a_log_line_is_redacted(fmt):
    from infra import logging_setup
    logging_setup.set_secret_literals(["ek_0123456789secret"])
    try:
        with _logged(fmt, "batchpress.test.fields") as (log, stream):
            log.warning("plain", extra={"request_id": "ek_0123456789secret",
                                        "batch_id": "https://u:pw@h.example/?token=zz",
                                        "job_id": "whsec_QUJDRA==",
                                        "note": "Bearer ek_0123456789"})
    finally:
        logging_setup.set_secret_literals([])
    text = stream.getvalue()
    for secret in ("ek_0123456789", "pw@", "token=zz", "QUJDRA"):
        assert secret not in text, (secret, text)
    assert "***" in text


def test_log_level_and_format_settings(env, monkeypatch):
    from infra import logging_setup
    monkeypatch.setenv("LOG_LEVEL", "warning")
    settings_module.get_settings.cache_clear()
    settings = settings_module.get_settings()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        logging_setup.configure(settings, force=True)
        assert root.level == logging.WARNING
        ours = [h for h in root.handlers if getattr(h, "_batchpress", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logging_setup.JsonFormatter)
        logging_setup.configure(settings)  # idempotent
        assert len([h for h in root.handlers if getattr(h, "_batchpress", False)]) == 1
    finally:
        for handler in list(root.handlers):
            if getattr(handler, "_batchpress", False):
                root.removeHandler(handler)
        root.setLevel(saved[0])


def test_a_request_path_cannot_start_a_line_of_its_own_in_the_text_log(client):
    from infra import logging_setup
    stream = io.StringIO()
    handler = logging_setup.make_handler("text", stream)
    access = logging.getLogger("batchpress.access")
    old_level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        response = client.get("/api/v1/batches/x%0aFORGED%20LINE%20200%00%E2%80%A8end")
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert response.status_code == 404
    [line] = stream.getvalue().splitlines()  # str.splitlines also splits at U+2028
    assert line.endswith(r"GET /api/v1/batches/x\nFORGED LINE 200\x00\u2028end 404")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_value_or_exception_message_breaks_a_line_of_the_log(fmt):
    forged = "2026-12-05 10:00:00,000 INFO batchpress.access [x y z]: GET / 200"
    with _logged(fmt, "batchpress.test.lines") as (log, stream):
        try:
            raise ValueError(f"bad cell\n{forged}\u2028{forged}")
        except ValueError:
            log.exception("cell %s", f"a\r\n{forged}\x85{forged}\x7f \\n")
    lines = stream.getvalue().splitlines()  # also splits at U+2028, U+0085 and \r
    if fmt == "json":
        [line] = lines
        assert "\x7f" not in line and "\u2028" not in line and "\x85" not in line
        assert json.loads(line)["exception"].endswith(f"bad cell\n{forged}\u2028{forged}")
        assert json.loads(line)["message"].endswith(f"{forged}\x85{forged}\x7f \\n")
    else:  # the record's line, then the traceback's, each but its first indented
        # a backslash the client typed is one too: not read as a line break
        assert lines[0].endswith(r"cell a\r\n" + forged + r"\x85" + forged + r"\x7f \\n")
        assert lines[1] == "Traceback (most recent call last):"
        assert all(line.startswith("    ") for line in lines[2:]), lines
        assert lines[-1] == rf"    {forged}\u2028{forged}"


def test_a_traceback_another_handler_formatted_first_is_still_indented_in_the_text_log():
    from infra import logging_setup
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None,
                                   sys.exc_info())
    record.request_id = record.batch_id = record.job_id = None  # as ContextFilter sets them
    logging.Formatter().format(record)  # caches the plain traceback on the record
    lines = logging_setup.TextFormatter().format(record).splitlines()
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-2:] == ["    ValueError: first line", "    second line"]
