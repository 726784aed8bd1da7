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


def test_the_compose_workers_keep_the_image_memory_the_worker_sets_up():
    # worker/image_memory.py yields to MALLOC_* and GLIBC_TUNABLES from the environment: one set
    # in the compose file would quietly replace its measured choice (one arena) on every host.
    import yaml
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("worker", "cron"):
        environment = services[name].get("environment") or {}
        assert not [k for k in environment if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]
