"""The service as `make run` starts it (embedded default, one process), for browser and CLI tests.

One instance serves a whole test session: it has two API keys, so tests see what a signed-in
user sees and that one key never sees another's batches.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"alice": "key-alice-7Hq2", "bob": "key-bob-p9Xw"}


@dataclass
class LiveService:
    base: str
    process: subprocess.Popen
    log: Path

    def headers(self, owner: str = "alice") -> dict:
        return {"Authorization": f"Bearer {KEYS[owner]}"}

    def upload(self, csv_text: str, owner: str = "alice", name: str = "products.csv",
               **fields) -> dict:
        response = requests.post(self.base + "/api/v1/batches", headers=self.headers(owner),
                                 files={"file": (name, csv_text)}, data=fields, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()

    def batch(self, batch_id: str, owner: str = "alice") -> dict:
        return requests.get(f"{self.base}/api/v1/batches/{batch_id}",
                            headers=self.headers(owner), timeout=10).json()

    def wait_finished(self, batch_id: str, owner: str = "alice", timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while (batch := self.batch(batch_id, owner))["status"] in ("queued", "processing"):
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)
        return batch


def _wait_until_up(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the service exited at start-up:\n" + log.read_text())
        try:
            requests.get(base + "/healthz", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("the service did not start in 30 s")


def start_service(log: Path, **settings: str):
    """`python -m api` on a free port with these settings on top of the test defaults; yields
    the LiveService and stops it by PID afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL", "PUBLIC_BASE_URL",
                        "API_KEYS", "CORS_ORIGINS", "S3_BUCKET", "MONGO_DB"}}
    env.update(PORT=str(port), ALLOW_PRIVATE_URLS="true", PYTHONUNBUFFERED="1",
               API_KEYS=",".join(f"{n}:{k}" for n, k in KEYS.items()),
               EVENTS_POLL_S="0.2", LOG_LEVEL="WARNING", DOWNLOAD_TIMEOUT_S="10",
               WEBHOOK_RETRY_SCHEDULE="60", BATCHPRESS_HOME=str(log.parent / "home"))
    env.update({name: value.replace("{base}", base) for name, value in settings.items()})
    with open(log, "w") as out:
        # A session of its own: the service's children (RQ's scheduler process) stop with it,
        # as they do when Ctrl-C reaches the whole group in a terminal.
        process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(base, process, log)
        yield LiveService(base, process, log)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except ProcessLookupError:  # the group has stopped already
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def live_service(tmp_path_factory):
    """The embedded default, as `make run` starts it with no services set; output URLs point
    at its /files by 127.0.0.1, like the pages the browser opens."""
    log = tmp_path_factory.mktemp("live") / "service.log"
    yield from start_service(log, PUBLIC_BASE_URL="{base}/files")


@pytest.fixture(scope="session")
def live_real_services(tmp_path_factory, redis_server, s3_server, mongo_wire):
    """`make run` with REDIS_URL, MONGO_URL and S3_ENDPOINT_URL set: the real-services mode
    (redis-server, the MongoDB wire stand-in, moto's S3 over HTTP), API and worker in one
    process. Its own Redis database, bucket and MongoDB database: other tests flush theirs."""
    if not mongo_wire.running:
        mongo_wire.start()
    log = tmp_path_factory.mktemp("live-real") / "service.log"
    yield from start_service(log, REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/7",
                             MONGO_URL=mongo_wire.uri, S3_ENDPOINT_URL=s3_server,
                             S3_BUCKET="bp-live-real", MONGO_DB="bp_live_real",
                             AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                             AWS_DEFAULT_REGION="us-east-1")
