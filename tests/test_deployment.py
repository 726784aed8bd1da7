"""gunicorn.conf.py: the server takes its workers, threads and port from the environment."""
from __future__ import annotations

from tests.helpers import ROOT


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
