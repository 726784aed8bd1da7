"""The service as `make run` starts it (embedded default, one process), for browser and CLI tests.

One instance serves a whole test session: it has two API keys, so tests see what a signed-in
user sees and that one key never sees another's batches.
"""
from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def live_service(tmp_path_factory):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL", "PUBLIC_BASE_URL",
                        "API_KEYS", "CORS_ORIGINS"}}
    env.update(PORT=str(port), ALLOW_PRIVATE_URLS="true", PYTHONUNBUFFERED="1",
               API_KEYS=",".join(f"{n}:{k}" for n, k in KEYS.items()),
               PUBLIC_BASE_URL=base + "/files", EVENTS_POLL_S="0.2", LOG_LEVEL="WARNING",
               DOWNLOAD_TIMEOUT_S="10", WEBHOOK_RETRY_SCHEDULE="60")
    log = tmp_path_factory.mktemp("live") / "service.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        _wait_until_up(base, process, log)
        yield LiveService(base, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
