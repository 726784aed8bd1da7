"""Helpers shared by test modules: settings changed for one test, problem+json assertions."""
from __future__ import annotations

from infra import settings as settings_module


def set_env(monkeypatch, **values) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    settings_module.get_settings.cache_clear()


def refuse_private_urls(monkeypatch, client, **values) -> None:
    """ALLOW_PRIVATE_URLS=false for the app under test and for the worker's side."""
    set_env(monkeypatch, ALLOW_PRIVATE_URLS="false", **values)
    monkeypatch.setattr(client.application.config["SETTINGS"], "allow_private_urls", False)


def assert_problem(response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    if kind:
        assert body["type"] == "/problems/" + kind, body
    return body
