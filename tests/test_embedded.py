"""`make run` with no outside services: one process on in-memory stand-ins serves the whole flow."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from standardwebhooks import Webhook

from tests.servers import DripServer, Route, free_port
from tests.test_flow import jpeg

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_default_serves_the_whole_flow(http_server, tmp_path):
    http_server.routes["/a.jpg"] = Route(jpeg(50, 40))
    http_server.routes["/hook"] = Route(b"", 204)
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL", "PUBLIC_BASE_URL", "API_KEYS",
                        "WEBHOOK_SECRET", "PUBLIC_API_URL"}}
    env.update(PORT=str(port), ALLOW_PRIVATE_URLS="true", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "run.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, process)
        # Loopback only by default: another address of this machine finds nothing listening.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.2:{port}/healthz", timeout=2)
        csv = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
        created = requests.post(base + "/api/v1/batches", files={"file": ("p.csv", csv)},
                                data={"webhook_url": http_server.url("/hook")}, timeout=10)
        assert created.status_code == 202, created.text
        batch_url = base + created.headers["Location"]
        deadline = time.monotonic() + 30
        while (batch := requests.get(batch_url, timeout=5).json())["status"] in ("queued", "processing"):
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
        assert batch["status"] == "completed", batch
        output = requests.get(batch["links"]["output_csv"], timeout=5).text.splitlines()
        out_url = output[1].split(",")[-1]
        assert out_url.startswith(f"http://localhost:{port}/files/outputs/")
        image = Image.open(io.BytesIO(requests.get(out_url, timeout=5).content))
        assert image.size == (50, 40) and image.format == "JPEG"
        hook = _wait_for_webhook(http_server)
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.seek(0)
        text = log.read()
    assert "EMBEDDED MODE" in text
    # The random secret of the run is printed once, so the batch's webhook can be verified.
    secret = re.search(r"signed with WEBHOOK_SECRET=(whsec_\S+)", text).group(1)
    event = Webhook(secret).verify(hook["body"], hook["headers"])
    assert event["data"]["status"] == "completed"
    # Links a subscriber can follow: absolute, on the address the service serves.
    assert event["data"]["links"]["self"] == f"http://localhost:{port}{created.headers['Location']}"


def test_a_slow_webhook_receiver_does_not_hold_up_other_batches(http_server, tmp_path):
    # The receiver answers 200 and then drips its body for 50 s; WEBHOOK_TIMEOUT_S lets an
    # attempt last 30 s. Another batch uploaded meanwhile must finish while it is still held.
    receiver = DripServer("close", "body", every=0.05, count=1000)
    http_server.routes["/a.jpg"] = Route(jpeg(50, 40))
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL", "PUBLIC_BASE_URL", "API_KEYS"}}
    env.update(PORT=str(port), ALLOW_PRIVATE_URLS="true", PYTHONUNBUFFERED="1",
               WEBHOOK_TIMEOUT_S="30")
    log = open(tmp_path / "run.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    csv = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    try:
        _wait_until_up(base, process)
        first = requests.post(base + "/api/v1/batches", files={"file": ("p.csv", csv)},
                              data={"webhook_url": receiver.url("/hook")}, timeout=10)
        assert first.status_code == 202, first.text
        deadline = time.monotonic() + 30
        while not receiver.requests:  # the first batch finished and its webhook is being sent
            assert time.monotonic() < deadline, "the webhook was never sent"
            time.sleep(0.1)
        second = requests.post(base + "/api/v1/batches", files={"file": ("q.csv", csv)},
                               timeout=10)
        batch_url = base + second.headers["Location"]
        while (batch := requests.get(batch_url, timeout=5).json())["status"] in ("queued",
                                                                                 "processing"):
            assert time.monotonic() < deadline + 30, batch
            time.sleep(0.1)
        held = not receiver.cut.is_set() and not receiver.served.is_set()
    finally:
        process.terminate()
        process.wait(timeout=15)
        receiver.stop()
    assert batch["status"] == "completed", batch
    assert held, "the second batch waited for the slow webhook attempt to end"


def _wait_for_webhook(http_server) -> dict:
    deadline = time.monotonic() + 15
    while not (hooks := [r for r in http_server.requests if r["path"] == "/hook"]):
        assert time.monotonic() < deadline, "no webhook arrived"
        time.sleep(0.1)
    return {"body": hooks[0]["body"], "headers": {k.lower(): v for k, v in hooks[0]["headers"].items()}}


def _wait_until_up(base: str, process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited at start-up"
        try:
            requests.get(base + "/api/v1/batches", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("the service did not start in 30 s")
