"""Idempotent uploads (`Idempotency-Key` on POST /batches): the same key again returns the same
batch, per caller, and makes one batch under concurrency."""
from __future__ import annotations

import threading

import pytest

from infra import db, queues
from tests.batch_helpers import csv_text, problem, serve_images, upload


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


def test_idempotency_key_reused_with_other_sizes_names_what_may_differ(client, http_server):
    text = csv_text([serve_images(http_server, 1)])
    first = upload(client, text, headers={"Idempotency-Key": "key-s"}, sizes="thumb=100")
    assert first.status_code == 202
    for fields in ({"sizes": "thumb=200"}, {"sizes": "thumb=100", "full_size": "false"}):
        body = problem(upload(client, text, headers={"Idempotency-Key": "key-s"}, **fields), 422)
        assert body["batch_id"] == first.get_json()["id"]
        # the caller changed sizes/full_size, not the file: the answer must not send them
        # looking for a change in the file or webhook_url only
        assert "sizes" in body["detail"] and "full_size" in body["detail"]


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
