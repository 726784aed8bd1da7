"""/healthz and /readyz (api/health.py): alive, and which dependency is down."""
from __future__ import annotations

import time

from infra import db, queues, settings as settings_module, storage
from tests.servers import free_port


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
