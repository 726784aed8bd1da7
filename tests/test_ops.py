"""Operating the service: API keys and isolation, health and readiness, the RQ dashboard,
metrics, JSON logs with request ids, the OpenAPI document and its offline docs page, and the
deployment files (docker compose, Procfile, gunicorn config)."""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from infra import db, queues, settings as settings_module, storage
from tests.servers import Route, free_port
from tests.test_flow import jpeg, upload

ROOT = Path(__file__).resolve().parent.parent
CSV = "S. No.,Product Name,Input Image Urls\n1,Mug,https://example.com/a.jpg\n"


def make_app(monkeypatch, **env):
    """A fresh app with these environment variables on top of the `env` fixture's."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    from api import create_app
    app = create_app(settings_module.get_settings())
    app.config["TESTING"] = True
    return app


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- API keys and isolation -----------------------------------------------------------------

KEYS = "alice:ak_0123456789abcdef,bob:bk_fedcba9876543210"


def test_without_keys_the_api_is_open_and_warns(env, caplog):
    from api import create_app
    with caplog.at_level(logging.WARNING):
        app = create_app(env)
    assert any("API_KEYS is not set" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    assert client.get("/api/v1/batches").status_code == 200


def test_keys_are_required_on_every_api_call(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    for headers in ({}, bearer("nope"), {"Authorization": "Basic ak_0123456789abcdef"},
                    {"Authorization": "Bearer"}):
        response = client.get("/api/v1/batches", headers=headers)
        assert response.status_code == 401, headers
        assert response.mimetype == "application/problem+json"
        body = response.get_json()
        assert body["status"] == 401 and body["type"].endswith("unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # An unknown route under /api/v1 does not tell whether it exists either.
    assert client.get("/api/v1/nothing-here").status_code == 401
    assert client.post("/api/v1/batches", data=CSV, content_type="text/csv").status_code == 401
    assert client.get("/api/v1/batches", headers=bearer("ak_0123456789abcdef")).status_code == 200
    # Outside /api/v1 nothing needs a key.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_each_key_sees_only_its_own_batches(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    created = client.post("/api/v1/batches", data=CSV, content_type="text/csv", headers=alice)
    assert created.status_code == 202
    batch_id = created.get_json()["id"]
    assert db.batches().find_one({"_id": batch_id})["owner"] == "alice"

    assert client.get(f"/api/v1/batches/{batch_id}", headers=alice).status_code == 200
    for path in (f"/api/v1/batches/{batch_id}", f"/api/v1/batches/{batch_id}/products",
                 f"/api/v1/batches/{batch_id}/output.csv", f"/api/v1/batches/{batch_id}/errors.csv",
                 f"/api/v1/batches/{batch_id}/deliveries"):
        response = client.get(path, headers=bob)
        assert response.status_code == 404, path  # never 403: ids cannot be probed
    assert client.post(f"/api/v1/batches/{batch_id}/cancel", headers=bob).status_code == 404
    assert client.get("/api/v1/batches", headers=bob).get_json()["items"] == []
    assert [b["id"] for b in client.get("/api/v1/batches", headers=alice).get_json()["items"]] \
        == [batch_id]


def test_each_key_sees_only_its_own_webhook_subscriptions(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    created = client.post("/api/v1/webhooks", json={"url": "https://example.com/hook",
                                                    "events": ["batch.completed"]}, headers=alice)
    assert created.status_code == 201, created.get_json()
    sub_id = created.get_json()["id"]
    assert client.get("/api/v1/webhooks", headers=bob).get_json()["items"] == []
    assert client.delete(f"/api/v1/webhooks/{sub_id}", headers=bob).status_code == 404
    assert client.post(f"/api/v1/webhooks/{sub_id}/rotate-secret", headers=bob).status_code == 404
    assert [s["id"] for s in client.get("/api/v1/webhooks", headers=alice).get_json()["items"]] \
        == [sub_id]


def test_each_key_sees_only_its_own_deliveries(env, monkeypatch, http_server, work):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    http_server.routes["/hook"] = Route(b"ok")
    text = "S. No.,Product Name,Input Image Urls\n1,,http://x/y.jpg\n"  # fails at once
    created = client.post(f"/api/v1/batches?webhook_url={http_server.url('/hook')}", data=text,
                          content_type="text/csv", headers=alice)
    assert created.status_code == 202, created.get_json()
    batch_id = created.get_json()["id"]
    work()
    deliveries = client.get(f"/api/v1/batches/{batch_id}/deliveries", headers=alice).get_json()
    assert len(deliveries["items"]) == 1
    delivery_id = deliveries["items"][0]["id"]
    assert client.get(f"/api/v1/deliveries/{delivery_id}", headers=alice).status_code == 200
    assert client.get(f"/api/v1/deliveries/{delivery_id}", headers=bob).status_code == 404
    assert client.post(f"/api/v1/deliveries/{delivery_id}/redeliver",
                       headers=bob).status_code == 404
    assert client.get(f"/api/v1/batches/{batch_id}/deliveries", headers=bob).status_code == 404


def test_keys_from_a_file(env, monkeypatch, tmp_path):
    path = tmp_path / "keys"
    path.write_text("# operators' keys\n\ncarol: ck_abcdefabcdef\n")
    client = make_app(monkeypatch, API_KEYS=str(path)).test_client()
    assert client.get("/api/v1/batches", headers=bearer("ck_abcdefabcdef")).status_code == 200
    assert client.get("/api/v1/batches", headers=bearer("abcdefabcdef")).status_code == 401


def test_parse_keys_refuses_malformed_values(tmp_path):
    from infra.api_keys import ApiKeyError, parse_keys
    keys = parse_keys(" a:one1 , b:two2 ")
    assert keys.names == ["a", "b"]
    assert keys.owner_of("two2") == "b" and keys.owner_of("two") is None
    assert not parse_keys(None) and not parse_keys("")
    rotating = parse_keys("a:old1,a:new2,b:k3")  # one owner, two keys while rotating
    assert rotating.names == ["a", "b"]
    assert rotating.owner_of("old1") == rotating.owner_of("new2") == "a"
    for bad in ("justakey", "a:", ":k", "a:k1,b:k1", str(tmp_path / "missing")):
        with pytest.raises(ApiKeyError) as error:
            parse_keys(bad)
        assert "k1" not in str(error.value) and "k2" not in str(error.value)


def test_malformed_keys_stop_the_start(env, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        make_app(monkeypatch, API_KEYS="alice")
    assert "API_KEYS" in str(stop.value)


# --- health and readiness -------------------------------------------------------------------

def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready",
                                "checks": {"redis": "ok", "mongodb": "ok", "s3": "ok"}}


def test_readyz_names_every_dependency_that_is_down(env, monkeypatch):
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("REDIS_URL", f"redis://{dead}/0")
    monkeypatch.setenv("MONGO_URL", f"mongodb://{dead}/?directConnection=true")
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://{dead}")
    monkeypatch.setenv("READY_TIMEOUT_S", "1")
    settings_module.get_settings.cache_clear()
    db.use_client(None)
    queues.use_connection(None)
    storage.use_endpoint(None)
    from api import create_app
    app = create_app(settings_module.get_settings(), prepare_stores=False)
    started = time.monotonic()
    try:
        response = app.test_client().get("/readyz")
    finally:  # the env fixture's teardown flushes the real Redis
        monkeypatch.setenv("REDIS_URL", env.redis_url)
        settings_module.get_settings.cache_clear()
        queues.use_connection(None)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert sorted(body["failed"]) == ["mongodb", "redis", "s3"]
    for name in ("redis", "mongodb", "s3"):
        assert name in body["detail"]
    assert app.test_client().get("/healthz").status_code == 200  # alive, not ready


def test_readyz_names_only_the_one_that_fails(client, s3, env):
    s3.delete_bucket(Bucket=env.s3_bucket)
    body = client.get("/readyz").get_json()
    assert body["status"] == 503 and body["failed"] == ["s3"]
    assert body["checks"]["redis"] == "ok" and body["checks"]["mongodb"] == "ok"


# --- RQ dashboard ---------------------------------------------------------------------------

def test_dashboard_is_off_without_credentials(client):
    assert client.get("/rq/").status_code == 404
    assert "rq_dashboard" not in client.application.blueprints


def test_dashboard_needs_basic_auth_and_shows_jobs(env, monkeypatch):
    app = make_app(monkeypatch, DASHBOARD_USER="ops", DASHBOARD_PASSWORD="s3cret-pass")
    client = app.test_client()
    response = upload(client, CSV)
    assert response.status_code == 202
    job_id = f"{response.get_json()['id']}-parse"

    for headers in ({}, basic("ops", "wrong"), basic("other", "s3cret-pass")):
        denied = client.get("/rq/", headers=headers)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith('Basic realm="')
        assert denied.mimetype == "application/problem+json"
        assert denied.get_json()["status"] == 401
        assert denied.get_json()["type"] == "/problems/unauthorized"
    assert client.get("/rq/0/data/queues.json").status_code == 401

    auth = basic("ops", "s3cret-pass")
    page = client.get("/rq/", headers=auth)
    assert page.status_code == 200 and b"RQ" in page.data
    queues_json = client.get("/rq/0/data/queues.json", headers=auth).get_json()
    counts = {q["name"]: q["count"] for q in queues_json["queues"]}
    assert counts["batches"] == 1
    jobs = client.get("/rq/0/data/jobs/batches/queued/8/asc/1.json", headers=auth).get_json()
    assert [j["id"] for j in jobs["jobs"]] == [job_id]
    assert client.get(f"/rq/0/view/job/{job_id}", headers=auth).status_code == 200
    assert client.get(f"/rq/0/data/job/{job_id}.json", headers=auth).get_json()["id"] == job_id
    assert client.get("/rq/0/view/workers", headers=auth).status_code == 200

    # No CSRF protection of its own: a change needs this very site as Origin/Referer.
    refused = client.post(f"/rq/job/{job_id}/delete", headers=auth)
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    assert refused.get_json()["status"] == 403 and "WWW-Authenticate" not in refused.headers
    assert client.post(f"/rq/job/{job_id}/delete", headers={
        **auth, "Origin": "https://evil.example"}).status_code == 403
    assert client.get("/rq/requeue/failed", headers=auth).status_code == 403
    assert client.post(f"/rq/job/{job_id}/delete", headers={
        **auth, "Origin": "http://localhost"}).status_code == 200
    assert queues.get_queue("batches").count == 0


def test_dashboard_works_on_the_embedded_in_memory_redis(env, monkeypatch):
    from infra import embedded
    queues.use_connection(embedded.in_memory_redis())
    client = make_app(monkeypatch, DASHBOARD_USER="ops", DASHBOARD_PASSWORD="pw-123456") \
        .test_client()
    queues.get_queue("images").enqueue(log_in_a_job, "bat_emb", job_id="bat_emb-chunk-0")
    auth = basic("ops", "pw-123456")
    assert client.get("/rq/", headers=auth).status_code == 200
    counts = {q["name"]: q["count"] for q in
              client.get("/rq/0/data/queues.json", headers=auth).get_json()["queues"]}
    assert counts == {"images": 1}
    assert client.get("/rq/0/view/job/bat_emb-chunk-0", headers=auth).status_code == 200
    assert client.get("/readyz").get_json()["checks"]["redis"] == "ok"


def test_dashboard_opens_with_the_admin_api_key(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS="admin:adm_key_123456,alice:ak_123456").test_client()
    assert client.get("/rq/", headers=basic("admin", "adm_key_123456")).status_code == 200
    assert client.get("/rq/", headers=basic("alice", "ak_123456")).status_code == 401
    assert client.get("/rq/", headers=basic("admin", "ak_123456")).status_code == 401


# --- metrics --------------------------------------------------------------------------------

def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        got_name, _, raw_labels = sample.partition("{")
        if got_name != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def test_metrics_count_the_pipeline(client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(40, 30), headers={"Content-Type": "image/jpeg"})
    a, missing = http_server.url("/a.jpg"), http_server.url("/no.jpg")
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Shirt,"{a}"\n2,Mug,"{missing}"\n3,,{a}\n')
    assert upload(client, text).status_code == 202
    work()
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    body = response.get_data(as_text=True)
    assert metric(body, "batchpress_batches_finished_total", status="completed_with_errors") == 1
    assert metric(body, "batchpress_rows_total", result="accepted") == 2
    assert metric(body, "batchpress_rows_total", result="rejected") == 1
    assert metric(body, "batchpress_images_total", result="processed") == 1
    assert metric(body, "batchpress_images_total", result="failed", reason="http_status") == 1
    assert metric(body, "batchpress_image_bytes_total", direction="in") >= len(jpeg(40, 30))
    assert metric(body, "batchpress_image_bytes_total", direction="out") > 0
    assert metric(body, "batchpress_download_seconds_count") == 2
    assert metric(body, "batchpress_download_seconds_bucket", le="+Inf") == 2
    assert metric(body, "batchpress_encode_seconds_count") == 1
    assert metric(body, "batchpress_queue_jobs", queue="images", state="queued") == 0
    assert metric(body, "batchpress_http_requests_total", method="POST",
                  endpoint="/api/v1/batches", status="202") >= 1


def test_metrics_show_queue_depths(client):
    upload(client, CSV)
    upload(client, CSV)
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_queue_jobs", queue="batches", state="queued") == 2
    assert "batchpress_rq_workers" in body


def test_webhook_attempts_are_counted_by_outcome(client):
    from infra import metrics
    for outcome in ({"status_code": 200, "duration_ms": 12}, {"status_code": 500, "error": "HTTP 500"},
                    {"status_code": 302, "error": "HTTP 302: redirects are not followed"},
                    {"error": "timed out after 10 s", "duration_ms": 10000},
                    {"error": "refused: private address"}, {"error": "could not connect: x"}):
        metrics.webhook_sent(outcome)
    body = client.get("/metrics").get_data(as_text=True)
    for outcome in ("success", "http_error", "redirect", "timeout", "refused", "connection_error"):
        assert metric(body, "batchpress_webhook_attempts_total", outcome=outcome) == 1, outcome
    assert metric(body, "batchpress_webhook_seconds_count", outcome="timeout") == 1


def test_metrics_in_multiprocess_mode(env, tmp_path):
    """Under gunicorn (PROMETHEUS_MULTIPROC_DIR set) every process's samples add up."""
    script = """
import os, sys
from api import create_app
from infra.settings import get_settings
app = create_app(get_settings(), prepare_stores=False)
client = app.test_client()
for _ in range(int(sys.argv[1])):
    client.get("/healthz")
if sys.argv[2] == "print":
    sys.stdout.write(client.get("/metrics").get_data(as_text=True))
"""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = [sys.executable, "-c", script]
    subprocess.run(run + ["3", "quiet"], env=environment, cwd=ROOT, check=True, timeout=60,
                   capture_output=True)
    out = subprocess.run(run + ["2", "print"], env=environment, cwd=ROOT, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert metric(out, "batchpress_http_requests_total", method="GET", endpoint="/healthz",
                  status="200") == 5
    assert list(tmp_path.glob("*.db"))


# --- logs -----------------------------------------------------------------------------------

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


def log_in_a_job(batch_id: str) -> None:
    logging.getLogger("batchpress.test").info("inside the job")


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


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_field_of_a_log_line_is_redacted(fmt):
    from infra import logging_setup
    stream = io.StringIO()
    handler = logging_setup.make_handler(fmt, stream)
    log = logging.getLogger("batchpress.test.fields")
    log.addHandler(handler)
    log.propagate = False
    logging_setup.set_secret_literals(["ek_0123456789secret"])
    try:
        log.warning("plain", extra={"request_id": "ek_0123456789secret",
                                    "batch_id": "https://u:pw@h.example/?token=zz",
                                    "job_id": "whsec_QUJDRA==", "note": "Bearer ek_0123456789"})
    finally:
        log.removeHandler(handler)
        log.propagate = True
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


# --- OpenAPI and docs -----------------------------------------------------------------------

def flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_every_route_is_in_the_openapi_document(env, monkeypatch):
    app = make_app(monkeypatch, DASHBOARD_USER="ops", DASHBOARD_PASSWORD="pw-123456")
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    documented = {(shape(path), method.upper())
                  for path, item in document["paths"].items() for method in item
                  if method in {"get", "post", "put", "patch", "delete"}}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint in ("docs.static", "docs.docs_init"):
            continue
        if rule.rule.startswith(("/rq", "/files")):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if (shape(flask_path(rule.rule)), method) not in documented:
                missing.append(f"{method} {rule.rule}")
    assert not missing, f"routes missing from /openapi.json: {missing}"


def test_openapi_document_is_valid_and_built_from_the_models(client):
    from openapi_pydantic import OpenAPI
    document = client.get("/openapi.json").get_json()
    OpenAPI.model_validate(document)
    schemas = document["components"]["schemas"]
    for name in ("BatchOut", "ProductOut", "Problem", "BatchStatus", "WebhookSubscriptionIn",
                 "Delivery", "WebhookEvent"):
        assert name in schemas, name
    from schemas.batch import BatchOut
    assert set(schemas["BatchOut"]["properties"]) == set(BatchOut.model_fields)
    from schemas.product import ImageOut
    assert set(schemas["ImageOut"]["properties"]) == set(ImageOut.model_fields)
    # Every $ref points at a schema that exists.
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert refs and refs <= set(schemas)
    upload_op = document["paths"]["/api/v1/batches"]["post"]
    assert {"202", "400", "401", "413", "415", "422"} <= set(upload_op["responses"])
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert set(document["webhooks"]) == {"batch.completed", "batch.completed_with_errors",
                                         "batch.failed", "batch.cancelled"}


def test_openapi_document_passes_the_openapi_31_schema(client):
    from openapi_spec_validator import validate
    validate(client.get("/openapi.json").get_json())


def test_docs_render_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources)
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.data) > 100
    bundle = client.get("/docs/static/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.data
    assert "/openapi.json" in client.get("/docs/init.js").get_data(as_text=True)


# --- deployment files -----------------------------------------------------------------------

def test_docker_compose_file():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "redis", "mongo", "minio", "createbucket"} <= set(services)
    # The commands are the Procfile's (tests/test_topology.py checks it).
    for name in ("api", "worker", "redis", "mongo", "minio"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"].startswith("redis://redis")
        assert environment["MONGO_URL"].startswith("mongodb://mongo")
        assert environment["S3_ENDPOINT_URL"] == "http://minio:9000"
        assert environment["PUBLIC_BASE_URL"] == \
            "http://localhost:9000/" + environment["S3_BUCKET"]
        assert services[name]["depends_on"]["createbucket"]["condition"] == \
            "service_completed_successfully"
    bucket_script = str(services["createbucket"]["entrypoint"])
    assert "anonymous set download" in bucket_script and "/outputs" in bucket_script
    assert {"redis-data", "mongo-data", "minio-data"} <= set(compose["volumes"])


def test_procfile_and_gunicorn_config(monkeypatch):
    procfile = dict(line.split(":", 1) for line in
                    (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert "gunicorn -c gunicorn.conf.py" in procfile["web"]
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "16")
    monkeypatch.setenv("PORT", "8123")
    config: dict = {}
    exec(compile((ROOT / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), config)
    assert config["workers"] == 3 and config["threads"] == 16
    assert config["worker_class"] == "gthread"
    assert config["bind"] == "0.0.0.0:8123"
    assert config["graceful_timeout"] > 0 and config["timeout"] > 0
    assert callable(config["child_exit"])


def test_uploads_and_real_webhook_sends_are_counted(client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(20, 10))
    http_server.routes["/hook"] = Route(b"", 204)
    text = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    assert upload(client, text, webhook_url=http_server.url("/hook")).status_code == 202
    work()
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_batches_created_total") == 1
    assert metric(body, "batchpress_webhook_attempts_total", outcome="success") == 1
