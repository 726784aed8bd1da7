"""Helpers shared by test modules: settings changed for one test, problem+json assertions."""
from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

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


def log_in_a_job(batch_id: str) -> None:
    logging.getLogger("batchpress.test").info("inside the job")
