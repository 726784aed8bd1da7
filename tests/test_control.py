"""Batch control: cancel, retry, idempotent uploads, list filters, progress events, stall sweeper.

Real redis-server, S3 through moto, mongomock, a loopback image server, a burst SimpleWorker.
"""
from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image
from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from infra import db, jobs, queues, stores
from infra.settings import get_settings
from tests.servers import Route
from worker import tasks


def jpeg(color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, "JPEG", quality=90)
    return out.getvalue()


def csv_text(urls_per_row: list[list[str]]) -> str:
    lines = ["S. No.,Product Name,Input Image Urls"]
    for n, urls in enumerate(urls_per_row, start=1):
        lines.append(f'{n},Item {n},"{",".join(urls)}"')
    return "\n".join(lines) + "\n"


def upload(client, text: str, headers: dict | None = None, **form):
    return client.post("/api/v1/batches", headers=headers or {},
                       data={"file": (io.BytesIO(text.encode()), "products.csv"), **form},
                       content_type="multipart/form-data")


def serve_images(http_server, count: int, prefix: str = "img", **route) -> list[str]:
    urls = []
    for i in range(count):
        path = f"/{prefix}{i}.jpg"
        http_server.routes[path] = Route(jpeg((i * 20 % 255, 80, 120)),
                                         headers={"Content-Type": "image/jpeg"}, **route)
        urls.append(http_server.url(path))
    return urls


def get(client, batch_id: str) -> dict:
    return client.get(f"/api/v1/batches/{batch_id}").get_json()


def requests_to(http_server, path: str, method: str = "GET") -> int:
    return sum(1 for r in http_server.requests if r["path"] == path and r["method"] == method)


def webhook_events(http_server, path: str = "/hook") -> list[dict]:
    return [{"id": r["headers"].get("webhook-id") or r["headers"].get("Webhook-Id"),
             **json.loads(r["body"])}
            for r in http_server.requests if r["path"] == path and r["method"] == "POST"]


def wait_for(condition, timeout: float = 10.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def parse_only() -> None:
    """Run the batches queue only: the parse job, not the chunk jobs it enqueues."""
    SimpleWorker([queues.get_queue(queues.BATCHES)], connection=queues.get_redis()).work(
        burst=True, logging_level="WARNING")


def job_status(job_id: str):
    job = Job.fetch_many([job_id], connection=queues.get_redis())[0]
    return job.get_status(refresh=False) if job else None


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return response.get_json()


# --- cancel -----------------------------------------------------------------------------------

def test_cancel_queued_batch_at_once(client, http_server, work):
    http_server.routes["/hook"] = Route(b"ok")
    urls = serve_images(http_server, 2)
    batch = upload(client, csv_text([urls]), webhook_url=http_server.url("/hook")).get_json()
    parse_id = jobs.parse_job_id(batch["id"])
    assert job_status(parse_id) == JobStatus.QUEUED

    response = client.post(f"/api/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None
    assert job_status(parse_id) == JobStatus.CANCELED  # dropped from the queue
    assert queues.get_queue(queues.BATCHES).count == 0

    work()
    after = get(client, batch["id"])
    assert after["status"] == "cancelled"
    assert after["images"] == {"total": 0, "processed": 0, "failed": 0}
    assert requests_to(http_server, "/img0.jpg") == 0
    events = webhook_events(http_server)
    assert [e["type"] for e in events] == ["batch.cancelled"]
    assert events[0]["data"]["id"] == batch["id"]

    again = problem(client.post(f"/api/v1/batches/{batch['id']}/cancel"), 409)
    assert again["batch_status"] == "cancelled"


def test_cancel_processing_batch_stops_within_seconds(client, http_server, work):
    # 12 images, 3 a chunk (4 chunk jobs), 2 at a time, each download takes about 0.6 s.
    urls = serve_images(http_server, 12, chunk=200, delay_per_chunk=0.15)
    batch = upload(client, csv_text([urls[:6], urls[6:]])).get_json()
    outcome = {}

    def cancel_once_started():  # another client, while the worker runs in this thread
        wait_for(lambda: get(client, batch["id"])["images"]["processed"] >= 1)
        outcome["at"] = time.monotonic()
        outcome["response"] = client.post(f"/api/v1/batches/{batch['id']}/cancel")

    canceller = threading.Thread(target=cancel_once_started)
    canceller.start()
    work()  # returns once the running chunk stopped and the queue is empty
    stopped = time.monotonic()
    canceller.join(timeout=10)
    response = outcome["response"]
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "cancelled"
    assert stopped - outcome["at"] < 4
    after = get(client, batch["id"])
    assert after["status"] == "cancelled"
    done = after["images"]["processed"] + after["images"]["failed"]
    assert 1 <= done < 12
    fetched = sum(requests_to(http_server, f"/img{i}.jpg") for i in range(12))
    assert fetched < 12  # later images were never started
    # Chunk jobs still waiting at cancel time were dropped, not run.
    statuses = [job_status(jobs.chunk_job_id(batch["id"], n)) for n in range(4)]
    assert JobStatus.CANCELED in statuses
    # The output CSV still answers, with empty slots for images never processed.
    assert client.get(after["links"]["output_csv"]).status_code == 200
    # errors.csv lists every image the cancel kept from being processed.
    errors = client.get(after["links"]["errors_csv"]).get_data(as_text=True).splitlines()[1:]
    never = [line for line in errors if line.endswith(",cancelled")]
    assert len(never) == 12 - done and len(errors) == len(never) + after["images"]["failed"]
    assert all("the batch was cancelled" in line for line in never)


def test_cancel_finished_and_unknown_batches(client, http_server, work):
    urls = serve_images(http_server, 1)
    batch = upload(client, csv_text([urls])).get_json()
    work()
    assert get(client, batch["id"])["status"] == "completed"
    body = problem(client.post(f"/api/v1/batches/{batch['id']}/cancel"), 409)
    assert body["batch_status"] == "completed" and "finished" in body["detail"]
    assert get(client, batch["id"])["status"] == "completed"
    problem(client.post("/api/v1/batches/bat_nope/cancel"), 404)
    problem(client.post("/api/v1/batches/bat_nope/retry"), 404)
    assert client.get("/api/v1/batches/bat_nope/events").status_code == 404


# --- retry ------------------------------------------------------------------------------------

def test_retry_reprocesses_only_failed_images(client, http_server, work):
    http_server.routes["/hook"] = Route(b"ok")
    good = serve_images(http_server, 2, prefix="good")
    calls = {"n": 0}

    def flaky(handler):
        calls["n"] += 1
        if calls["n"] == 1:
            return Route(b"not there yet", 404)  # a 4xx fails at once (a 5xx is tried again)
        return Route(jpeg((0, 0, 255)), headers={"Content-Type": "image/jpeg"})
    http_server.routes["/flaky.jpg"] = flaky
    flaky_url = http_server.url("/flaky.jpg")
    # The flaky URL appears in two rows: one image, two slots.
    text = csv_text([[good[0], flaky_url], [flaky_url, good[1]]])
    batch = upload(client, text, webhook_url=http_server.url("/hook")).get_json()

    response = client.post(f"/api/v1/batches/{batch['id']}/retry")  # still queued
    assert problem(response, 409)["batch_status"] == "queued"

    work()
    first = get(client, batch["id"])
    assert first["status"] == "completed_with_errors"
    assert first["images"] == {"total": 4, "processed": 2, "failed": 2}

    response = client.post(f"/api/v1/batches/{batch['id']}/retry")
    assert response.status_code == 202, response.get_json()
    retried = response.get_json()
    assert retried["status"] == "processing" and retried["finished_at"] is None
    assert retried["images"] == {"total": 4, "processed": 2, "failed": 0}
    assert problem(client.post(f"/api/v1/batches/{batch['id']}/retry"), 409)["batch_status"] \
        == "processing"

    work()
    final = get(client, batch["id"])
    assert final["status"] == "completed"
    assert final["images"] == {"total": 4, "processed": 4, "failed": 0}
    assert final["progress"] == 1.0 and final["finished_at"] is not None
    assert requests_to(http_server, "/flaky.jpg") == 2
    assert requests_to(http_server, "/good0.jpg") == 1 and requests_to(http_server, "/good1.jpg") == 1
    rows = client.get(final["links"]["output_csv"]).get_data(as_text=True).splitlines()
    assert all(url for row in rows[1:] for url in row.split('","')[-1].strip('"').split(","))
    assert client.get(final["links"]["errors_csv"]).get_data(as_text=True).strip().count("\n") == 0

    events = webhook_events(http_server)
    assert [e["type"] for e in events] == ["batch.completed_with_errors", "batch.completed"]
    assert events[0]["id"] != events[1]["id"]  # a new finish, a new delivery id

    body = problem(client.post(f"/api/v1/batches/{batch['id']}/retry"), 409)
    assert body["type"].endswith("nothing-to-retry")


def test_retry_refuses_cancelled_and_file_failures(client, http_server, work):
    urls = serve_images(http_server, 1)
    cancelled = upload(client, csv_text([urls])).get_json()
    client.post(f"/api/v1/batches/{cancelled['id']}/cancel")
    assert problem(client.post(f"/api/v1/batches/{cancelled['id']}/retry"), 409)["batch_status"] \
        == "cancelled"
    no_valid_rows = upload(client, "S. No.,Product Name,Input Image Urls\n1,,http://x/y.jpg\n")
    work()
    failed = get(client, no_valid_rows.get_json()["id"])
    assert failed["status"] == "failed"
    problem(client.post(f"/api/v1/batches/{failed['id']}/retry"), 409)


# --- idempotent uploads -----------------------------------------------------------------------

def test_idempotency_key_same_file_returns_original(client, http_server):
    urls = serve_images(http_server, 1)
    text = csv_text([urls])
    first = upload(client, text, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 202
    again = upload(client, text, headers={"Idempotency-Key": "key-1"})
    assert again.status_code == 202, again.get_json()
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"

    other = upload(client, text + "2,Other,http://x/z.jpg\n", headers={"Idempotency-Key": "key-1"})
    body = problem(other, 422)
    assert body["batch_id"] == first.get_json()["id"]

    fresh = upload(client, text, headers={"Idempotency-Key": "key-2"})
    assert fresh.status_code == 202 and fresh.get_json()["id"] != first.get_json()["id"]
    without = upload(client, text)
    assert without.status_code == 202
    items = client.get("/api/v1/batches").get_json()["items"]
    assert len(items) == 3
    assert queues.get_queue(queues.BATCHES).count == 3  # the replay enqueued nothing
    problem(upload(client, text, headers={"Idempotency-Key": "x" * 256}), 400)


def test_idempotency_key_concurrent_requests_make_one_batch(app, http_server):
    urls = serve_images(http_server, 1)
    text = csv_text([urls])
    barrier = threading.Barrier(4)
    results = []

    def send():
        barrier.wait()
        response = upload(app.test_client(), text, headers={"Idempotency-Key": "same"})
        results.append((response.status_code, response.get_json()["id"]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [code for code, _ in results] == [202, 202, 202, 202]
    assert len({batch_id for _, batch_id in results}) == 1
    assert db.batches().count_documents({}) == 1
    assert db.idempotency_keys().count_documents({}) == 1
    assert queues.get_queue(queues.BATCHES).count == 1


def test_idempotency_key_is_per_caller(env, monkeypatch, http_server):
    from api import create_app
    from infra import settings as settings_module
    monkeypatch.setenv("API_KEYS", "alice:key-alice-123456,bob:key-bob-1234567")
    settings_module.get_settings.cache_clear()
    client = create_app(settings_module.get_settings()).test_client()
    if client.get("/api/v1/batches").status_code != 401:
        pytest.skip("API keys are not enforced by this build")
    text = csv_text([serve_images(http_server, 1)])
    alice = {"Authorization": "Bearer key-alice-123456", "Idempotency-Key": "k"}
    bob = {"Authorization": "Bearer key-bob-1234567", "Idempotency-Key": "k"}
    first = upload(client, text, headers=alice)
    second = upload(client, text, headers=bob)
    assert first.status_code == 202 and second.status_code == 202
    assert first.get_json()["id"] != second.get_json()["id"]
    assert upload(client, text, headers=alice).get_json()["id"] == first.get_json()["id"]
    assert client.get(f"/api/v1/batches/{first.get_json()['id']}/events",
                      headers={"Authorization": bob["Authorization"]}).status_code == 404
    assert client.post(f"/api/v1/batches/{first.get_json()['id']}/cancel",
                       headers={"Authorization": bob["Authorization"]}).status_code == 404


# --- list filters -----------------------------------------------------------------------------

def test_list_filters_status_and_created_range(client, http_server):
    urls = serve_images(http_server, 1)
    ids = [upload(client, csv_text([urls])).get_json()["id"] for _ in range(4)]
    base = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
    for n, batch_id in enumerate(ids):  # created one hour apart
        db.batches().update_one({"_id": batch_id}, {"$set": {"created_at": base + timedelta(hours=n)}})
    db.batches().update_one({"_id": ids[1]}, {"$set": {"status": "cancelled"}})

    def listed(query: str) -> list[str]:
        response = client.get("/api/v1/batches" + query)
        assert response.status_code == 200, response.get_json()
        return [item["id"] for item in response.get_json()["items"]]

    assert listed("") == ids[::-1]
    assert listed("?status=cancelled") == [ids[1]]
    assert listed("?status=queued") == [ids[3], ids[2], ids[0]]
    assert listed("?created_after=2026-11-20T13:00:00Z") == [ids[3], ids[2]]
    assert listed("?created_before=2026-11-20T14:00:00Z") == [ids[1], ids[0]]
    assert listed("?created_after=2026-11-20T12:30:00%2B00:00&created_before=2026-11-20T15:00:00Z") \
        == [ids[2], ids[1]]
    # An unencoded "+" arrives as a space; it is read as the offset it was meant to be.
    assert listed("?created_after=2026-11-20T14:30:00+01:00") == [ids[3], ids[2]]
    assert listed("?status=queued&created_after=2026-11-20T12:30:00Z") == [ids[3], ids[2]]
    page = client.get("/api/v1/batches?status=queued&limit=2").get_json()
    assert [i["id"] for i in page["items"]] == [ids[3], ids[2]]
    rest = client.get(f"/api/v1/batches?status=queued&limit=2&cursor={page['next_cursor']}").get_json()
    assert [i["id"] for i in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    problem(client.get("/api/v1/batches?status=bogus"), 400)
    problem(client.get("/api/v1/batches?created_after=yesterday"), 400)
    problem(client.get("/api/v1/batches?created_before=2026-11-20T12:00:00"), 400)


# --- progress events --------------------------------------------------------------------------

def parse_sse(text: str) -> list[dict]:
    """Events and comments of an event stream, in order."""
    items = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        item: dict = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                item.setdefault("comments", []).append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    item["data"] = item.get("data", "") + value
                else:
                    item[name] = value
        items.append(item)
    return items


def test_events_for_finished_batch_and_last_event_id(client, http_server, work):
    urls = serve_images(http_server, 2)
    batch = upload(client, csv_text([urls])).get_json()
    work()
    url = f"/api/v1/batches/{batch['id']}/events"
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    items = parse_sse(response.get_data(as_text=True))
    assert items[0] == {"retry": "2000"}
    events = [i for i in items if "event" in i]
    assert [e["event"] for e in events] == ["progress", "status"]
    progress = json.loads(events[0]["data"])
    assert progress["id"] == batch["id"] and progress["status"] == "completed"
    assert progress["images"] == {"total": 2, "processed": 2, "failed": 0}
    assert json.loads(events[1]["data"])["status"] == "completed"
    assert events[0]["id"] != events[1]["id"]

    # Reconnecting after the progress event: only the final status event is sent again.
    resumed = parse_sse(client.get(url, headers={"Last-Event-ID": events[0]["id"]})
                        .get_data(as_text=True))
    assert [e["event"] for e in resumed if "event" in e] == ["status"]
    # After the final event: 204, which tells an EventSource to stop reconnecting.
    assert client.get(url, headers={"Last-Event-ID": events[1]["id"]}).status_code == 204
    # A Last-Event-ID this API never sent is ignored.
    fresh = parse_sse(client.get(url, headers={"Last-Event-ID": "garbage"}).get_data(as_text=True))
    assert [e["event"] for e in fresh if "event" in e] == ["progress", "status"]


def test_events_follow_a_running_batch(client, http_server, work, monkeypatch):
    monkeypatch.setattr(get_settings(), "events_poll_s", 0.05)
    urls = serve_images(http_server, 6, chunk=200, delay_per_chunk=0.05)
    batch = upload(client, csv_text([urls])).get_json()
    streamed = {}

    def listen():
        streamed["text"] = client.get(f"/api/v1/batches/{batch['id']}/events").get_data(as_text=True)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.2)
    work()
    listener.join(timeout=10)
    text = streamed["text"]
    events = [i for i in parse_sse(text) if "event" in i]
    assert events[-1]["event"] == "status"
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 3  # queued/processing/... then finished
    keys = [tuple(int(p) for p in e["id"].split(".")) for e in events]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # strictly increasing ids
    done = [json.loads(e["data"])["images"]["processed"] for e in progress]
    assert done == sorted(done) and done[-1] == 6
    assert json.loads(progress[-1]["data"])["status"] == "completed"


def test_events_heartbeat_and_bounded_length(client, http_server, monkeypatch):
    monkeypatch.setattr(get_settings(), "events_poll_s", 0.05)
    monkeypatch.setattr(get_settings(), "events_heartbeat_s", 0.2)
    monkeypatch.setattr(get_settings(), "events_max_stream_s", 0.7)
    urls = serve_images(http_server, 1)
    batch = upload(client, csv_text([urls])).get_json()  # no worker: it stays queued
    started = time.monotonic()
    items = parse_sse(client.get(f"/api/v1/batches/{batch['id']}/events").get_data(as_text=True))
    assert time.monotonic() - started < 3
    assert [i["event"] for i in items if "event" in i] == ["progress"]
    comments = [c for i in items for c in i.get("comments", [])]
    assert comments.count("heartbeat") >= 2
    assert "reconnect" in comments[-1]


# --- stall sweeper ----------------------------------------------------------------------------

def later(env) -> datetime:
    """A moment past the stall timeout, so every untouched batch counts as stalled."""
    return datetime.now(timezone.utc) + timedelta(seconds=env.stall_timeout_s + 1)


def test_sweeper_requeues_a_parse_job_lost_from_redis(client, http_server, work, env):
    from worker import sweeper
    urls = serve_images(http_server, 4)
    batch = upload(client, csv_text([urls[:2], urls[2:]])).get_json()
    assert sweeper.sweep(later(env)) == []  # stalled, but its parse job is still queued
    queues.get_redis().flushdb()  # Redis restarted without persistence
    assert sweeper.sweep() == []  # not stalled yet
    recovered = sweeper.sweep(later(env))
    assert recovered == [{"batch_id": batch["id"], "action": "parse"}]
    assert sweeper.sweep(later(env) - timedelta(seconds=2)) == []  # its clock restarted
    work()
    after = get(client, batch["id"])
    assert after["status"] == "completed"
    assert after["images"] == {"total": 4, "processed": 4, "failed": 0}


def test_sweeper_finishes_a_chunk_job_killed_midway(client, http_server, work, env):
    from worker import chunks, sweeper
    urls = serve_images(http_server, 5)  # chunks of 3: chunk 0 has 3 images, chunk 1 has 2
    batch = upload(client, csv_text([urls[:3], urls[3:]])).get_json()
    batch_id = batch["id"]
    parse_only()
    assert get(client, batch_id)["status"] == "processing"
    # A worker ran chunk 0 for one image, then died: its job is "started" with a dead heartbeat.
    conn = queues.get_redis()
    image_queue = queues.get_queue(queues.IMAGES)
    chunk0 = Job.fetch(jobs.chunk_job_id(batch_id, 0), connection=conn)
    image_queue.remove(chunk0)
    chunk0.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queues.IMAGES, connection=conn)
    conn.zadd(registry.key, {f"{chunk0.id}:dead-execution": time.time() - 5})
    [first] = [im for im in stores.products().pending_images(batch_id, 0) if im.url == urls[0]]
    watch = chunks._CancelWatch(batch_id)
    from worker.download import make_session
    session = make_session(env, pool_size=1)
    assert chunks._one(first, batch_id, session, env, watch) == 1
    session.close()
    # Chunk 1's job is gone altogether (evicted, or Redis lost it).
    Job.fetch(jobs.chunk_job_id(batch_id, 1), connection=conn).delete()
    assert image_queue.count == 0

    recovered = sweeper.sweep(later(env))
    assert recovered == [{"batch_id": batch_id, "action": "chunks", "chunks": [0, 1]}]
    work()
    after = get(client, batch_id)
    assert after["status"] == "completed"
    assert after["images"] == {"total": 5, "processed": 5, "failed": 0}
    assert requests_to(http_server, "/img0.jpg") == 1  # done before the kill, not redone
    assert all(requests_to(http_server, f"/img{i}.jpg") == 1 for i in range(5))


def test_sweeper_leaves_running_work_alone_and_finishes_forgotten_batches(
        client, http_server, work, env):
    from worker import chunks, sweeper
    urls = serve_images(http_server, 2)
    batch_id = upload(client, csv_text([urls])).get_json()["id"]
    parse_only()
    # A started job whose worker heartbeat is fresh is alive: the sweeper leaves it alone.
    conn = queues.get_redis()
    job = Job.fetch(jobs.chunk_job_id(batch_id, 0), connection=conn)
    queues.get_queue(queues.IMAGES).remove(job)
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queues.IMAGES, connection=conn)
    conn.zadd(registry.key, {f"{job.id}:live-execution": time.time() + 60})
    assert sweeper.sweep(later(env)) == []
    # The worker did every image but died before finishing the batch, and a counter update
    # was lost too: the sweeper re-derives the counts and finishes the batch (once).
    chunks.process_chunk(batch_id, 0, env)
    db.batches().update_one({"_id": batch_id}, {"$set": {"images_processed": 1}})
    conn.delete(registry.key)
    job.delete()
    recovered = sweeper.sweep(later(env))
    assert recovered == [{"batch_id": batch_id, "action": "finish", "status": "completed"}]
    after = get(client, batch_id)
    assert after["status"] == "completed" and after["images"]["processed"] == 2
    assert sweeper.sweep(later(env)) == []  # finished batches are not swept


def test_sweeper_runs_from_rq_cron(client, http_server, work, env):
    from rq.cron import CronScheduler
    urls = serve_images(http_server, 1)
    batch_id = upload(client, csv_text([urls])).get_json()["id"]
    queues.get_redis().flushdb()
    db.batches().update_one({"_id": batch_id},
                            {"$set": {"updated_at": datetime.now(timezone.utc)
                                      - timedelta(seconds=env.stall_timeout_s + 5)}})
    cron = CronScheduler(connection=queues.get_redis())
    cron.load_config_from_file("worker.cron_config")
    jobs = {job.func_name: job for job in cron.get_jobs()}
    assert set(jobs) == {"worker.sweeper.run_sweep", "worker.webhook_delivery.recover_overdue"}
    assert jobs["worker.sweeper.run_sweep"].interval == 60
    cron.enqueue_jobs()
    assert queues.get_queue(queues.BATCHES).count == 1
    assert queues.get_queue(queues.WEBHOOKS).count == 1
    work()  # runs the sweep, which enqueues the lost parse job, which the same burst runs
    assert get(client, batch_id)["status"] == "completed"


def test_sweeper_thread_for_a_single_process(client, http_server, env):
    from worker import sweeper
    batch_id = upload(client, csv_text([serve_images(http_server, 1)])).get_json()["id"]
    queues.get_redis().flushdb()
    db.batches().update_one({"_id": batch_id},
                            {"$set": {"updated_at": datetime.now(timezone.utc)
                                      - timedelta(seconds=env.stall_timeout_s + 5)}})
    stop = threading.Event()
    thread = sweeper.start_thread(stop, interval=0.05)
    try:
        wait_for(lambda: job_status(jobs.parse_job_id(batch_id)) == JobStatus.QUEUED, timeout=5)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert db.batches().find_one({"_id": batch_id})["sweeps"] == 1


@pytest.mark.parametrize("raw", ["1.2", "a.b.c", "", "1.2.3.4"])
def test_parse_key_ignores_foreign_ids(raw):
    from api.control import parse_key
    assert parse_key(raw) is None


def test_sweeper_gives_up_on_a_parse_that_keeps_dying(client, http_server, env, monkeypatch):
    from worker import sweeper
    monkeypatch.setenv("MAX_STALL_RECOVERIES", "2")
    get_settings.cache_clear()
    batch_id = upload(client, csv_text([serve_images(http_server, 1)])).get_json()["id"]
    for _ in range(2):  # its parse job is lost (the worker killed mid-parse), twice
        queues.get_redis().flushdb()
        assert [r["action"] for r in sweeper.sweep(later(env))] == ["parse"]
    queues.get_redis().flushdb()
    assert sweeper.sweep(later(env)) == [
        {"batch_id": batch_id, "action": "gave_up", "status": "failed"}]
    batch = get(client, batch_id)
    assert batch["status"] == "failed"
    assert batch["error"] == ("the file could not be processed: gave up after 2 recoveries: its "
                              "jobs kept stalling (workers lost or killed while processing it)")
    assert sweeper.sweep(later(env)) == []


def test_sweeper_gives_up_only_after_recoveries_in_a_row_without_progress(
        client, http_server, env, monkeypatch):
    from worker import sweeper
    monkeypatch.setenv("MAX_STALL_RECOVERIES", "2")
    get_settings.cache_clear()
    urls = serve_images(http_server, 4)  # CHUNK_SIZE 3: chunks 0 and 1
    batch_id = upload(client, csv_text([urls])).get_json()["id"]
    parse_only()

    def lose_jobs_and_sweep():
        queues.get_redis().flushdb()
        return sweeper.sweep(later(env))

    assert [r["action"] for r in lose_jobs_and_sweep()] == ["chunks"]           # 1st in a row
    assert [r["action"] for r in lose_jobs_and_sweep()] == ["chunks"]           # 2nd
    tasks.process_chunk(batch_id, 1)  # progress: the count starts again
    assert [r.get("chunks") for r in lose_jobs_and_sweep()] == [[0]]            # 1st
    assert [r.get("chunks") for r in lose_jobs_and_sweep()] == [[0]]            # 2nd
    assert lose_jobs_and_sweep() == [
        {"batch_id": batch_id, "action": "gave_up", "status": "completed_with_errors"}]
    batch = get(client, batch_id)
    assert batch["images"] == {"total": 4, "processed": 1, "failed": 3}
    errors = client.get(f"/api/v1/batches/{batch_id}/errors.csv").get_data(as_text=True)
    assert errors.count("gave up after 2 recoveries") == 3
    assert errors.count(",stalled\r\n") == 3
