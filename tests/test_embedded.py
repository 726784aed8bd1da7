"""`make run` with no outside services: one process on SQLite and local files serves the whole
flow, keeps its data under BATCHPRESS_HOME, and finishes an interrupted batch after a restart."""
from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from standardwebhooks import Webhook

from tests.helpers import metric
from tests.servers import DripServer, HeldRoute, Route, free_port
from tests.test_flow import jpeg

ROOT = Path(__file__).resolve().parent.parent


class Service:
    """`python -m api` in the embedded default, its data in `home`, its output in `log`."""

    def __init__(self, home: Path, log: Path, **variables):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if k not in {"REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL", "PUBLIC_BASE_URL",
                            "API_KEYS", "WEBHOOK_SECRET", "PUBLIC_API_URL"}}
        env.update(PORT=str(self.port), ALLOW_PRIVATE_URLS="true", PYTHONUNBUFFERED="1",
                   BATCHPRESS_HOME=str(home), **variables)
        self.log = log
        with open(log, "a") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                                            stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the service exited at start-up: " + log.read_text()
            try:
                requests.get(self.base + "/healthz", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("the service did not start in 30 s")

    def batch(self, batch_id: str) -> dict:
        return requests.get(f"{self.base}/api/v1/batches/{batch_id}", timeout=5).json()

    def wait(self, batch_id: str, done, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while not done(batch := self.batch(batch_id)):
            assert time.monotonic() < deadline, batch
            time.sleep(0.1)
        return batch

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


def finished(batch: dict) -> bool:
    return batch["status"] not in ("queued", "processing")


def test_embedded_default_serves_the_whole_flow_from_its_home_folder(http_server, tmp_path):
    http_server.routes["/a.jpg"] = Route(jpeg(50, 40))
    http_server.routes["/hook"] = Route(b"", 204)
    home = tmp_path / "home"
    service = Service(home, tmp_path / "run.log")
    port = service.port
    try:
        # Loopback only by default: another address of this machine finds nothing listening.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.2:{port}/healthz", timeout=2)
        csv = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
        created = requests.post(service.base + "/api/v1/batches", files={"file": ("p.csv", csv)},
                                data={"webhook_url": http_server.url("/hook")}, timeout=10)
        assert created.status_code == 202, created.text
        batch = service.wait(created.json()["id"], finished)
        assert batch["status"] == "completed", batch
        output = requests.get(batch["links"]["output_csv"], timeout=5).text.splitlines()
        out_url = output[1].split(",")[-1]
        assert out_url.startswith(f"http://localhost:{port}/files/outputs/")
        image = Image.open(io.BytesIO(requests.get(out_url, timeout=5).content))
        assert image.size == (50, 40) and image.format == "JPEG"
        assert requests.get(service.base + "/files/outputs/none.jpg", timeout=5).status_code == 404
        ready = requests.get(service.base + "/readyz", timeout=5).json()
        assert ready["checks"] == {"redis": "ok", "sqlite": "ok", "files": "ok"}
        hook = _wait_for_webhook(http_server)
    finally:
        service.stop()
    text = (tmp_path / "run.log").read_text()
    assert "EMBEDDED MODE" in text and str(home.resolve()) in text
    # The random secret of the run is printed once, so the batch's webhook can be verified.
    secret = re.search(r"signed with WEBHOOK_SECRET=(whsec_\S+)", text).group(1)
    event = Webhook(secret).verify(hook["body"], hook["headers"])
    assert event["data"]["status"] == "completed"
    # Links a subscriber can follow: absolute, on the address the service serves.
    assert event["data"]["links"]["self"] == f"http://localhost:{port}{created.headers['Location']}"
    # Everything is in the home folder: the database and the objects, as named at start-up.
    rows = sqlite3.connect(home / "batchpress.sqlite3").execute(
        "SELECT status FROM batches").fetchall()
    assert rows == [("completed",)]
    stored = {p.relative_to(home / "objects").parts[0] for p in (home / "objects").rglob("*.*")
              if ".tmp" not in p.parts}
    assert stored == {"uploads", "outputs"}


def test_a_slow_webhook_receiver_does_not_hold_up_other_batches(http_server, tmp_path):
    # The receiver answers 200 and then drips its body for 50 s; WEBHOOK_TIMEOUT_S lets an
    # attempt last 30 s. Another batch uploaded meanwhile must finish while it is still held.
    receiver = DripServer("close", "body", every=0.05, count=1000)
    http_server.routes["/a.jpg"] = Route(jpeg(50, 40))
    csv = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    service = Service(tmp_path / "home", tmp_path / "run.log", WEBHOOK_TIMEOUT_S="30")
    try:
        first = requests.post(service.base + "/api/v1/batches", files={"file": ("p.csv", csv)},
                              data={"webhook_url": receiver.url("/hook")}, timeout=10)
        assert first.status_code == 202, first.text
        deadline = time.monotonic() + 30
        while not receiver.requests:  # the first batch finished and its webhook is being sent
            assert time.monotonic() < deadline, "the webhook was never sent"
            time.sleep(0.1)
        second = requests.post(service.base + "/api/v1/batches",
                               files={"file": ("q.csv", csv)}, timeout=10)
        batch = service.wait(second.json()["id"], finished, timeout=60)
        held = not receiver.cut.is_set() and not receiver.served.is_set()
    finally:
        service.stop()
        receiver.stop()
    assert batch["status"] == "completed", batch
    assert held, "the second batch waited for the slow webhook attempt to end"


def test_a_throttled_image_waits_out_its_retry_after_and_the_batch_completes(http_server,
                                                                             tmp_path):
    # `make run` alone: the wait goes through the in-process queues and scheduler thread.
    seen: list[float] = []

    def throttling(handler):
        seen.append(time.time())
        if len(seen) == 1:
            return Route(b"slow down", 429, headers={"Retry-After": "2"})
        return Route(jpeg(50, 40))
    http_server.routes["/busy.jpg"] = throttling
    http_server.routes["/calm.jpg"] = Route(jpeg(30, 20))
    csv = ("S. No.,Product Name,Input Image Urls\n"
           f"1,Mug,{http_server.url('/busy.jpg')}\n2,Cup,{http_server.url('/calm.jpg')}\n")
    service = Service(tmp_path / "home", tmp_path / "run.log", IMAGE_CONCURRENCY="1")
    try:
        created = requests.post(service.base + "/api/v1/batches", files={"file": ("p.csv", csv)},
                                timeout=10).json()
        batch = service.wait(created["id"], finished, timeout=60)
        metrics = requests.get(service.base + "/metrics", timeout=5).text
    finally:
        service.stop()
    assert batch["status"] == "completed", batch
    assert batch["images"] == {"total": 2, "processed": 2, "failed": 0, "reused": 0}
    assert len(seen) == 2 and seen[1] - seen[0] >= 2.0
    assert metric(metrics, "batchpress_host_throttled_total", status="429") == 1
    assert metric(metrics, "batchpress_image_deferrals_total", reason="throttled") == 1
    assert metric(metrics, "batchpress_image_deferrals_total", reason="host_paused") == 1


def _wait_for_webhook(http_server) -> dict:
    deadline = time.monotonic() + 15
    while not (hooks := [r for r in http_server.requests if r["path"] == "/hook"]):
        assert time.monotonic() < deadline, "no webhook arrived"
        time.sleep(0.1)
    return {"body": hooks[0]["body"], "headers": {k.lower(): v for k, v in hooks[0]["headers"].items()}}


def test_a_batch_interrupted_by_a_restart_finishes_with_nothing_doubled(http_server, tmp_path):
    count = 12
    for n in range(count):  # slow enough that the stop comes in the middle of the batch
        http_server.routes[f"/{n}.jpg"] = Route(jpeg(30 + n, 20), delay_per_chunk=0.15, chunk=256)
    rows = "".join(f"{n + 1},Item {n + 1},{http_server.url(f'/{n}.jpg')}\n" for n in range(count))
    rows += f"{count + 1},Twice,{http_server.url('/0.jpg')}\n"
    home, log = tmp_path / "home", tmp_path / "run.log"
    settings = {"IMAGE_CONCURRENCY": "1", "CHUNK_SIZE": "2"}
    first = Service(home, log, **settings)
    try:
        created = requests.post(first.base + "/api/v1/batches", timeout=10, files={
            "file": ("p.csv", "S. No.,Product Name,Input Image Urls\n" + rows)}).json()
        first.wait(created["id"], lambda b: b["images"]["processed"] >= 3)
    finally:
        first.stop()
    fetched_before = len(http_server.requests)

    second = Service(home, log, **settings)
    try:
        batch = second.wait(created["id"], finished)
        assert batch["status"] == "completed", batch
        assert (batch["rows"]["total"], batch["rows"]["valid"], batch["rows"]["invalid"]) == (
            count + 1, count + 1, 0)
        assert batch["images"] == {"total": count + 1, "processed": count + 1, "failed": 0, "reused": 0}
        output = requests.get(f"{second.base}/api/v1/batches/{created['id']}/output.csv",
                              timeout=5).text.splitlines()
        assert [line.split(",")[0] for line in output[1:]] == [str(n) for n in range(1, count + 2)]
        products = requests.get(f"{second.base}/api/v1/batches/{created['id']}/products"
                                  "?limit=500", timeout=5).json()["items"]
        assert len(products) == count + 1
        assert all(item["status"] == "completed" for item in products)
    finally:
        second.stop()
    # Images finished before the stop were not fetched again; at most the one in flight was.
    fetched = [r["path"] for r in http_server.requests]
    assert len(fetched) <= count + 1, fetched
    assert len(set(fetched)) == count
    assert fetched_before >= 2  # /0.jpg holds two of the slots counted
    assert "Resuming 1 unfinished batch" in log.read_text()
    # Both runs signed batch webhooks with the one secret kept in the home folder, so a
    # delivery retried after the restart still verifies.
    printed = re.findall(r"signed with WEBHOOK_SECRET=(whsec_\S+)", log.read_text())
    assert len(printed) == 2 and printed[0] == printed[1], printed
    kept = home / "webhook_secret"
    assert kept.read_text().strip() == printed[0] and kept.stat().st_mode & 0o777 == 0o600


def test_the_embedded_default_reuses_a_re_imported_image_from_its_own_files(http_server,
                                                                           tmp_path):
    from tests.servers import ConditionalRoute
    route = ConditionalRoute(jpeg(50, 40))
    http_server.routes["/a.jpg"] = route
    service = Service(tmp_path / "home", tmp_path / "run.log")
    csv = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    try:
        images = []
        for _ in range(2):
            created = requests.post(service.base + "/api/v1/batches",
                                    files={"file": ("p.csv", csv)}, timeout=10)
            batch = service.wait(created.json()["id"], finished)
            assert batch["status"] == "completed", batch
            items = requests.get(batch["links"]["products"], timeout=5).json()["items"]
            images.append(items[0]["images"][0])
        first, second = images
        assert (first["reused"], second["reused"]) == (False, True)
        assert route.not_modified == 1
        assert second["output_url"] != first["output_url"]
        # A file of its own: the first batch's going away leaves the second's.
        (tmp_path / "home" / "objects" / first["output_url"].split("/files/", 1)[1]).unlink()
        kept = requests.get(second["output_url"], timeout=5)
        assert kept.status_code == 200 and Image.open(io.BytesIO(kept.content)).size == (50, 40)
    finally:
        service.stop()


def test_ctrl_c_says_what_it_waits_for_and_a_second_one_stops_at_once(http_server, tmp_path):
    import signal
    hanging = HeldRoute(Route(jpeg(40, 30)))  # a server that does not answer until let
    http_server.routes["/hang.jpg"] = hanging
    home, log = tmp_path / "home", tmp_path / "run.log"
    first = Service(home, log, DOWNLOAD_TIMEOUT_S="25")
    try:
        created = requests.post(first.base + "/api/v1/batches", timeout=10, files={
            "file": ("p.csv", "S. No.,Product Name,Input Image Urls\n"
                              f"1,Lamp,{http_server.url('/hang.jpg')}\n")}).json()
        first.wait(created["id"], lambda b: http_server.requests)  # its download is in flight
        first.process.send_signal(signal.SIGINT)
        wait_for_text(log, "Stopping: the images in flight finish first")
        assert first.process.poll() is None  # the download in flight is waited for
        time.sleep(1.2)  # a second Ctrl-C, not the first one delivered twice
        first.process.send_signal(signal.SIGINT)
        assert first.process.wait(timeout=5) == 128 + signal.SIGINT
    finally:
        hanging.release()
        if first.process.poll() is None:
            first.stop()
    text = log.read_text()
    assert "Stopped at once: unfinished work is taken up again at the next start" in text
    assert "Traceback" not in text and "Exception ignored" not in text, text

    second = Service(home, log)  # the image in flight is fetched again
    try:
        batch = second.wait(created["id"], finished)
        assert batch["status"] == "completed" and batch["images"]["processed"] == 1, batch
    finally:
        second.stop()


def test_ctrl_c_lets_the_image_in_flight_finish_and_starts_no_other(http_server, tmp_path):
    import signal
    held = HeldRoute(Route(jpeg(40, 30)))  # answers once the test has asked for the stop
    http_server.routes["/first.jpg"] = held
    http_server.routes["/second.jpg"] = Route(jpeg(30, 20))
    home, log = tmp_path / "home", tmp_path / "run.log"
    settings = {"IMAGE_CONCURRENCY": "1", "PER_HOST_CONCURRENCY": "1"}
    first = Service(home, log, **settings)
    try:
        created = requests.post(first.base + "/api/v1/batches", timeout=10, files={
            "file": ("p.csv", "S. No.,Product Name,Input Image Urls\n"
                              f"1,Lamp,{http_server.url('/first.jpg')}\n"
                              f"2,Vase,{http_server.url('/second.jpg')}\n")}).json()
        first.wait(created["id"], lambda b: http_server.requests)  # the first is in flight
        first.process.send_signal(signal.SIGINT)
        wait_for_text(log, "Stopping: the images in flight finish first")
        held.release()
        assert first.process.wait(timeout=20) == 0  # once the image in flight is done
    finally:
        held.release()
        if first.process.poll() is None:
            first.stop()
    assert [r["path"] for r in http_server.requests] == ["/first.jpg"]  # no new one started

    second = Service(home, log, **settings)
    try:
        batch = second.wait(created["id"], finished)
        assert batch["status"] == "completed", batch
        assert batch["images"] == {"total": 2, "processed": 2, "failed": 0, "reused": 0}
    finally:
        second.stop()
    assert [r["path"] for r in http_server.requests] == ["/first.jpg", "/second.jpg"]
    assert "Traceback" not in log.read_text()


def wait_for_text(log: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
