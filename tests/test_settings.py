"""Settings: the contract's defaults, and a clear start-up refusal of bad values."""
from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path

from infra.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REAL_SERVICES = {"redis_url": "redis://r", "mongo_url": "mongodb://m", "s3_endpoint_url": "http://s"}
SERVICE_VARIABLES = ("REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL")


def run_service(tmp_path, **variables) -> subprocess.CompletedProcess:
    """`python -m api` in an empty directory with only these service variables set."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env.update(PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               **variables)
    return subprocess.run([sys.executable, "-m", "api"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_defaults_are_the_contracts(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("MAX_", "OUTPUT_", "DOWNLOAD_", "WEBHOOK_", "PORT")):
            monkeypatch.delenv(name)
    settings = Settings(_env_file=None)
    assert settings.port == 8000
    assert settings.output_quality == 50
    assert settings.max_download_bytes == 25_000_000
    assert settings.max_image_pixels == 50_000_000
    assert settings.download_timeout_s == 30
    assert settings.max_redirects == 3
    assert settings.webhook_timeout_s == 10
    assert settings.webhook_secret.startswith("whsec_")
    assert settings.retry_delays[0] <= 30 and len(settings.retry_delays) >= 5
    assert sum(settings.retry_delays) >= 3600


def test_bad_values_stop_start_up_naming_each_variable(tmp_path):
    env = {**os.environ, "OUTPUT_QUALITY": "500", "WEBHOOK_SECRET": "hunter2",
           "WEBHOOK_RETRY_SCHEDULE": "soon", "REDELIVER_RATE": "often", "PORT": "8000"}
    result = subprocess.run([sys.executable, "-m", "api"], cwd=tmp_path, env={
        **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in ("OUTPUT_QUALITY", "WEBHOOK_SECRET", "WEBHOOK_RETRY_SCHEDULE", "REDELIVER_RATE"):
        assert name in result.stderr, result.stderr


def test_start_up_warns_about_an_unset_webhook_secret_and_private_urls(monkeypatch):
    from infra.settings import startup_warnings
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    warned = " ".join(startup_warnings(Settings(_env_file=None, **REAL_SERVICES,
                                                allow_private_urls=True)))
    assert "WEBHOOK_SECRET is not set" in warned and "ALLOW_PRIVATE_URLS" in warned
    quiet = startup_warnings(Settings(_env_file=None, **REAL_SERVICES,
                                      webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
    assert quiet == []


def test_a_partial_real_services_configuration_is_refused_in_one_line(tmp_path):
    result = run_service(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Invalid settings: REDIS_URL is set but MONGO_URL and "
                               "S3_ENDPOINT_URL are not")
    assert "listening" not in result.stdout


def test_no_full_size_by_default_needs_default_sizes(tmp_path):
    result = run_service(tmp_path, DEFAULT_FULL_SIZE="false")
    assert result.returncode == 2
    assert result.stderr.strip() == ("Invalid settings: DEFAULT_FULL_SIZE=false needs "
                                     "DEFAULT_SIZES: without a full-size output, an image's "
                                     "outputs are its sizes")
    assert Settings(_env_file=None, default_full_size=False,
                    default_sizes="thumb=200").default_full_size is False


def test_a_chunk_budget_must_leave_its_started_images_time_within_the_job_timeout():
    with pytest.raises(ValueError, match="CHUNK_BUDGET_S .900. must be less than JOB_TIMEOUT_S"):
        Settings(_env_file=None, chunk_budget_s=900, job_timeout_s=900)
    assert Settings(_env_file=None, job_timeout_s=900).chunk_budget == 450
    assert Settings(_env_file=None, chunk_budget_s=60).chunk_budget == 60


def test_a_service_down_at_start_up_is_named_in_one_line(tmp_path, redis_server, s3_server):
    from tests.servers import free_port
    dead = f"mongodb://127.0.0.1:{free_port()}"
    result = run_service(tmp_path, REDIS_URL=redis_server.url, MONGO_URL=dead,
                         S3_ENDPOINT_URL=s3_server, READY_TIMEOUT_S="1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "listening" not in result.stdout
    refusals = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(refusals) == 1, result.stderr
    assert refusals[0].startswith(f"Batchpress cannot start: MongoDB (MONGO_URL={dead}) "
                                  "does not answer")
