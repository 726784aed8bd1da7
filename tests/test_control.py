"""Batch control (api/control.py): cancel, retry failed images, progress events.

Real redis-server, S3 through moto, mongomock, a loopback image server, a burst SimpleWorker.
"""
from __future__ import annotations

import json
import threading
import time

import pytest
from rq.job import JobStatus

from infra import jobs, queues
from infra.settings import get_settings
from tests.batch_helpers import (
    csv_text, get, job_status, jpeg, problem, requests_to, serve_images, upload, wait_for)
from tests.servers import Route


def webhook_events(http_server, path: str = "/hook") -> list[dict]:
    return [{"id": r["headers"].get("webhook-id") or r["headers"].get("Webhook-Id"),
             **json.loads(r["body"])}
            for r in http_server.requests if r["path"] == path and r["method"] == "POST"]


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
    assert after["images"] == {"total": 0, "processed": 0, "failed": 0, "reused": 0}
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
    assert first["images"] == {"total": 4, "processed": 2, "failed": 2, "reused": 0}

    response = client.post(f"/api/v1/batches/{batch['id']}/retry")
    assert response.status_code == 202, response.get_json()
    retried = response.get_json()
    assert retried["status"] == "processing" and retried["finished_at"] is None
    assert retried["images"] == {"total": 4, "processed": 2, "failed": 0, "reused": 0}
    assert problem(client.post(f"/api/v1/batches/{batch['id']}/retry"), 409)["batch_status"] \
        == "processing"

    work()
    final = get(client, batch["id"])
    assert final["status"] == "completed"
    assert final["images"] == {"total": 4, "processed": 4, "failed": 0, "reused": 0}
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
    assert progress["images"] == {"total": 2, "processed": 2, "failed": 0, "reused": 0}
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


@pytest.mark.parametrize("raw", ["1.2", "a.b.c", "", "1.2.3.4"])
def test_parse_key_ignores_foreign_ids(raw):
    from api.control import parse_key
    assert parse_key(raw) is None
