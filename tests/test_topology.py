"""The service as separate processes (tests/topology.py), with faults injected mid-batch.

Every fault test ends with the same checks (`assert_batch_outcome`): the right final status,
exact row and image counts, one image record and one S3 object per processed image, exactly
one successful final webhook with one `webhook-id`.
"""
from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter

import psutil
import pytest
import requests
import yaml

from tests.servers import HttpServer, Route
from tests.test_flow import jpeg
from tests.topology import ROOT, Topology, procfile

FINAL = {"completed", "completed_with_errors", "failed", "cancelled"}


# --- one process list ----------------------------------------------------------------------------

def test_compose_and_the_makefile_run_the_procfiles_commands():
    processes = procfile()
    assert processes["worker"] == ["python", "-m", "worker"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose["api"]["command"] == processes["web"]
    assert compose["worker"]["command"] == processes["worker"]
    assert compose["cron"]["command"] == processes["cron"]
    makefile = (ROOT / "Makefile").read_text()
    for target, name in (("worker", "worker"), ("cron", "cron")):
        recipe = makefile.split(f"\n{target}: ", 1)[1].splitlines()[1].strip()
        recipe = recipe.replace("$(PY)", "python").replace("$(VENV)/bin/", "")
        assert recipe.split() == processes[name], target


# --- the harness -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def topology():
    topo = Topology()
    yield topo
    topo.stop()


@pytest.fixture()
def topo(topology):
    """The running topology, with any process a previous test stopped started again."""
    for process in list(topology.processes):
        if not process.alive():
            topology.replace(process)
    for process in (topology.s3, topology.mongo):
        process.signal(signal.SIGUSR2)  # listening again, if a test stopped it
    if topology.redis.process.poll() is not None:
        topology.redis.restart()
    topology.wait_ready()
    yield topology


@pytest.fixture()
def peers():
    """Images and the webhook receiver: a real HTTP server in this process."""
    server = HttpServer()
    server.routes["/hook"] = Route(b"", 204)
    yield server
    server.stop()


def serve(peers, count: int, delay: float = 0.0, prefix: str = "img") -> list[str]:
    # URLs of their own: a later test's server may get an earlier one's port, and the same
    # URL with the same bytes would then be a re-import (reused outputs), as in production.
    tag = uuid.uuid4().hex[:8]
    urls = []
    for n in range(count):
        body = jpeg(48, 32, color=(n * 7 % 256, 90, 160))
        path = f"/{prefix}{n}-{tag}.jpg"
        # Sent in 4 parts with `delay` after each: every download takes about 4 x delay.
        peers.routes[path] = Route(body, chunk=max(1, len(body) // 4 + 1),
                                   delay_per_chunk=delay)
        urls.append(peers.url(path))
    return urls


def upload(topo, rows: list[list[str]], peers) -> str:
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f'{n},Product {n},"{",".join(urls)}"' for n, urls in enumerate(rows, 1)]
    response = requests.post(topo.url("/api/v1/batches"),
                             params={"webhook_url": peers.url("/hook")},
                             files={"file": ("p.csv", io.BytesIO("\n".join(lines).encode()))},
                             timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def get_batch(topo, batch_id: str) -> dict:
    return requests.get(topo.url(f"/api/v1/batches/{batch_id}"), timeout=30).json()


def wait_for(condition, timeout: float, what: str, topo=None, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (requests.RequestException, ValueError):
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{topo.logs()}" if topo else ""))


def wait_final(topo, batch_id: str, timeout: float = 120) -> dict:
    last: dict = {}

    def final():
        last.update(get_batch(topo, batch_id))
        return last["status"] in FINAL and dict(last)
    try:
        return wait_for(final, timeout, f"batch {batch_id} to finish", topo)
    except AssertionError as error:
        raise AssertionError(f"{error}\nlast seen: {last}") from None


def hook_requests(peers, batch_id: str) -> list[dict]:
    found = []
    for request in list(peers.requests):
        if request["path"] == "/hook" and request["method"] == "POST":
            body = json.loads(request["body"])
            if body["data"]["id"] == batch_id:
                found.append({**request, "json": body})
    return found


def running_chunk_worker(topo):
    """(the worker process running a chunk job now, its work-horse pid), or None."""
    from rq import Worker
    by_pid = {process.pid: process for process in topo.workers}
    for worker in Worker.all(connection=topo.redis_client()):
        job_id = worker.get_current_job_id()
        if worker.pid in by_pid and job_id and "-chunk-" in job_id:
            return by_pid[worker.pid]
    return None


def assert_batch_outcome(topo, peers, batch_id: str, *, status: str, rows: int,
                         images: int, processed: int, failed: int) -> dict:
    batch = wait_final(topo, batch_id)
    assert batch["status"] == status, batch
    assert {k: batch["rows"][k] for k in ("total", "valid", "invalid")} == \
        {"total": rows, "valid": rows, "invalid": 0}
    assert batch["images"] == {"total": images, "processed": processed, "failed": failed, "reused": 0}
    db = topo.mongo_db()
    docs = list(db.images.find({"batch_id": batch_id}))
    assert len(docs) == images  # one record per image (each URL is used once here)
    assert sum(d["status"] == "processed" for d in docs) == processed
    assert db.products.count_documents({"batch_id": batch_id}) == rows
    listed = topo.s3_client().list_objects_v2(Bucket=topo.env["S3_BUCKET"],
                                              Prefix=f"outputs/{batch_id}/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    assert keys == sorted(d["output_key"] for d in docs if d["status"] == "processed")
    # Exactly one final event: retries reuse its webhook-id, and only one got a 2xx.
    wait_for(lambda: hook_requests(peers, batch_id), 30, "the final webhook", topo)
    time.sleep(1)  # a second, duplicate event would have been sent by now
    sent = hook_requests(peers, batch_id)
    assert {r["headers"]["webhook-id"] for r in sent} == {sent[0]["headers"]["webhook-id"]}
    assert sent[-1]["json"]["type"] == f"batch.{status}"
    return batch


# --- the batch as separate processes run it --------------------------------------------------------

def test_a_batch_goes_through_gunicorn_two_forking_workers_and_cron(topo, peers):
    urls = serve(peers, 10)
    batch_id = upload(topo, [urls[i:i + 2] for i in range(0, 10, 2)], peers)
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=5, images=10,
                         processed=10, failed=0)
    assert len(hook_requests(peers, batch_id)) == 1


def test_the_compose_healthchecks_of_worker_and_cron_tell_a_live_process_from_a_stopped_one(
        topo):
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    def check(name: str) -> int:
        command = services[name]["healthcheck"]["test"][1:]  # after "CMD"
        assert command[0] == "python"
        return subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=topo.env,
                              timeout=30).returncode
    assert check("worker") == 0 and check("cron") == 0
    topo.cron.signal(signal.SIGTERM)
    topo.cron.popen.wait(timeout=30)
    assert check("cron") == 1  # the fixture starts it again for the next test


def embedded_stand_ins() -> set[str]:
    """The packages requirements-embedded.txt adds on top of requirements.txt (their import
    names are their project names here)."""
    names = set()
    for line in (ROOT / "requirements-embedded.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0].lower())
    return names


def test_the_production_processes_need_none_of_the_embedded_stand_ins(topo):
    # The production image installs requirements.txt only; the stand-ins are in
    # requirements-embedded.txt. Importing the API, the worker and cron must not need them.
    blocked = embedded_stand_ins()
    assert len(blocked) >= 3, blocked  # the file was read
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               f"        if name.split('.')[0] in {sorted(blocked)!r}:\n"
               "            raise ImportError(name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "from api import create_app; create_app()\n"
               "import worker.__main__, worker.cron_config, worker.tasks, worker.sweeper\n")
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, env=topo.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


# --- faults: the receiver one first, before the ones that cost RQ its scheduler for a minute --

def test_a_webhook_receiver_down_gets_the_event_later_with_the_same_id(topo, peers):
    up_at = time.monotonic() + 6
    peers.routes["/hook"] = lambda handler: Route(b"", 204 if time.monotonic() > up_at else 503)
    urls = serve(peers, 2)
    batch_id = upload(topo, [urls], peers)
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=1, images=2,
                         processed=2, failed=0)
    wait_for(lambda: time.monotonic() > up_at and len(hook_requests(peers, batch_id)) >= 2
             and any(r for r in topo.mongo_db().deliveries.find(
                 {"batch_id": batch_id, "status": "succeeded"})), 90, "the late delivery", topo)
    sent = hook_requests(peers, batch_id)
    assert len({r["headers"]["webhook-id"] for r in sent}) == 1 and len(sent) >= 2


def test_a_worker_killed_mid_chunk_loses_and_doubles_nothing(topo, peers):
    urls = serve(peers, 12, delay=0.25)
    batch_id = upload(topo, [[u] for u in urls], peers)
    victim = wait_for(lambda: running_chunk_worker(topo), 60, "a chunk job to start", topo)
    time.sleep(0.3)  # in the middle of its images
    victim.signal(signal.SIGKILL, group=True)  # the worker and its work-horse: a lost node
    topo.replace(victim)  # as the orchestrator restarts it
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=12, images=12,
                         processed=12, failed=0)
    assert len(hook_requests(peers, batch_id)) == 1


def test_a_work_horse_killed_on_one_image_fails_that_image_alone(topo, peers):
    urls = serve(peers, 5)
    killed: list[int] = []

    def poison(handler):
        # The process that asked for this image is the work-horse: kill it, as the OOM killer
        # would on an image too large for memory.
        port = handler.client_address[1]
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.pid:
                killed.append(conn.pid)
                psutil.Process(conn.pid).kill()
        return Route(b"", 500)
    peers.routes["/poison.jpg"] = poison
    batch_id = upload(topo, [[u] for u in urls] + [[peers.url("/poison.jpg")]], peers)
    assert_batch_outcome(topo, peers, batch_id, status="completed_with_errors", rows=6,
                         images=6, processed=5, failed=1)
    worker_pids = {process.pid for process in topo.workers}
    assert len(killed) == 3 and not worker_pids & set(killed)  # MAX_IMAGE_ATTEMPTS horses
    doc = topo.mongo_db().images.find_one({"batch_id": batch_id, "status": "failed"})
    assert doc["url"].endswith("/poison.jpg") and "gave up after 3 attempts" in doc["error"]


def test_sigterm_to_a_worker_mid_chunk_stops_it_cleanly(topo, peers):
    urls = serve(peers, 8, delay=0.25)  # a second an image: the chunk is still running
    batch_id = upload(topo, [[u] for u in urls], peers)
    victim = wait_for(lambda: running_chunk_worker(topo), 60, "a chunk job to start", topo)
    victim.signal(signal.SIGTERM)  # a deploy: the images in flight finish, then it exits
    victim.popen.wait(timeout=30)
    assert victim.popen.returncode == 0, victim.tail()
    topo.replace(victim)
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=8, images=8,
                         processed=8, failed=0)


def test_a_deploy_stopping_every_worker_waits_only_for_the_images_in_flight(topo, peers):
    urls = serve(peers, 8, delay=0.5)  # two seconds an image: four a chunk on two threads
    batch_id = upload(topo, [[u] for u in urls], peers)
    wait_for(lambda: any(r["path"].endswith(".jpg") for r in peers.requests), 60,
             "a first download", topo)  # a chunk job is in the middle of its images
    stopped = list(topo.workers)
    for worker in stopped:  # a deploy: SIGTERM to every worker at once
        worker.signal(signal.SIGTERM)
    for worker in stopped:
        worker.popen.wait(timeout=30)
        assert worker.popen.returncode == 0, worker.tail()
    fetched = [r["path"] for r in peers.requests if r["path"].endswith(".jpg")]
    # The chunk jobs (CHUNK_SIZE 4, IMAGE_CONCURRENCY 2 here: the first four URLs are one chunk)
    # started no new image once told: of each chunk, at most the two in flight were fetched.
    per_chunk = Counter(int(re.match(r"/img(\d+)-", path).group(1)) // 4 for path in fetched)
    assert fetched and max(per_chunk.values()) <= 2, fetched
    assert get_batch(topo, batch_id)["status"] == "processing"
    for worker in stopped:
        topo.replace(worker)  # the new version starts
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=8, images=8,
                         processed=8, failed=0)
    fetched = [r["path"] for r in peers.requests if r["path"].endswith(".jpg")]
    assert sorted(fetched) == sorted(set(fetched)) and len(fetched) == len(urls)  # once each


def test_redis_restarted_mid_batch(topo, peers):
    urls = serve(peers, 12, delay=0.15)
    batch_id = upload(topo, [[u] for u in urls], peers)
    wait_for(lambda: running_chunk_worker(topo), 60, "a chunk job to start", topo)
    topo.redis.restart()  # AOF on: queued jobs survive
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=12, images=12,
                         processed=12, failed=0)
    assert [p.name for p in topo.processes if not p.alive()] == []  # each came back by itself


def _s3_refuses(topo) -> bool:
    from botocore.config import Config
    from botocore.exceptions import EndpointConnectionError
    client = topo.s3_client(config=Config(retries={"max_attempts": 1}))
    try:
        client.list_buckets()
    except EndpointConnectionError:
        return True
    return False


def test_s3_unreachable_for_10_s_is_waited_out_not_failed(topo, peers):
    urls = serve(peers, 10, delay=0.05)
    batch_id = upload(topo, [[u] for u in urls], peers)
    wait_for(lambda: get_batch(topo, batch_id)["images"]["processed"] >= 1, 60,
             "the first image", topo)
    topo.s3.signal(signal.SIGUSR1)  # connections refused and open ones cut from now on
    started = time.monotonic()
    wait_for(lambda: _s3_refuses(topo), 5, "S3 to refuse connections", topo)
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    topo.s3.signal(signal.SIGUSR2)
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=10, images=10,
                         processed=10, failed=0)


def test_mongodb_unreachable_for_10_s_answers_503_then_the_batch_finishes(topo, peers):
    urls = serve(peers, 10, delay=0.05)
    batch_id = upload(topo, [[u] for u in urls], peers)
    wait_for(lambda: get_batch(topo, batch_id)["images"]["processed"] >= 1, 60,
             "the first image", topo)
    topo.mongo.signal(signal.SIGUSR1)
    started = time.monotonic()
    [down] = wait_for(lambda: [r for r in [requests.get(topo.url(f"/api/v1/batches/{batch_id}"),
                                                        timeout=30)] if r.status_code == 503],
                      10, "a 503 while MongoDB is down", topo)
    assert down.headers["Content-Type"] == "application/problem+json"
    assert down.json()["service"] == "MongoDB" and down.headers["Retry-After"]
    ready = requests.get(topo.url("/readyz"), timeout=30)
    assert ready.status_code == 503 and ready.json()["failed"] == ["mongodb"]
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    topo.mongo.signal(signal.SIGUSR2)
    assert_batch_outcome(topo, peers, batch_id, status="completed", rows=10, images=10,
                         processed=10, failed=0)
