"""CORS_ORIGINS: browsers on the named origins may call /api/v1; nobody else, and none by default."""
from __future__ import annotations

import pytest

from infra import settings as settings_module
from tests.helpers import make_app

PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, idempotency-key"}


def test_no_cors_headers_by_default(client):
    answer = client.get("/api/v1/batches", headers={"Origin": "https://shop.example.com"})
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_only_configured_origins_are_allowed(env, monkeypatch):
    app = make_app(monkeypatch, CORS_ORIGINS="https://shop.example.com, http://localhost:3000",
                   API_KEYS="alice:key-alice-123456")
    client = app.test_client()
    preflight = client.options("/api/v1/batches",
                               headers={"Origin": "https://shop.example.com", **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "idempotency-key" in allowed
    # An error answer carries the header too, so the page can read the problem.
    refused = client.get("/api/v1/batches", headers={"Origin": "http://localhost:3000"})
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    other = client.options("/api/v1/batches", headers={"Origin": "https://evil.example", **PREFLIGHT})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_a_malformed_origin_is_refused_at_start_up(env, monkeypatch, capsys):
    monkeypatch.setenv("CORS_ORIGINS", "https://shop.example.com/admin")
    settings_module.get_settings.cache_clear()
    with pytest.raises(SystemExit):
        settings_module.get_settings()
    assert "CORS_ORIGINS" in capsys.readouterr().err
