"""Webhooks against a real loopback receiver: signing, retries, the log, redelivery, subscriptions."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
from flask import g, request
from rq.registry import ScheduledJobRegistry
from standardwebhooks import Webhook

from infra import db, jobs, queues, settings as settings_module, stores
from schemas.records import EVENTS, BatchRecord, DeliveryRecord, new_batch_id
from schemas.timestamps import now
from tests.helpers import assert_problem, refuse_private_urls, set_env
from tests.servers import DripServer, Route
from tests.test_flow import jpeg, upload
from worker import notify, tasks, webhook_delivery


@pytest.fixture()
def app(env):
    """The app, with the caller's owner taken from an X-Test-Owner header (auth stands in)."""
    from api import create_app
    application = create_app(env)
    application.config["TESTING"] = True

    @application.before_request
    def _owner():
        if request.headers.get("X-Test-Owner"):
            g.owner = request.headers["X-Test-Owner"]
    return application


def finished_batch(status="completed", *, owner=None, webhook_url=None) -> BatchRecord:
    """A batch stored in its final state, announced the way the finishing job does it."""
    batch_id = new_batch_id()
    stores.batches().create(BatchRecord.new(
        batch_id=batch_id, owner=owner, filename="p.csv", csv_key="k", csv_sha256="0",
        csv_bytes=1, webhook_url=webhook_url))
    stamp = now()
    db.batches().update_one({"_id": batch_id}, {
        "$set": {"status": status, "parsed": True, "rows_total": 1, "rows_valid": 1,
                 "images_total": 1, "images_processed": 1, "started_at": stamp,
                 "finished_at": stamp}, "$inc": {"finish_seq": 1}})
    batch = stores.batches().get(batch_id, any_owner=True)
    tasks.finish(batch)
    return batch


def a_delivery(delivery_id: str) -> DeliveryRecord:
    return DeliveryRecord(id=delivery_id, batch_id="bat_x", owner=None, event="batch.completed",
                          finish_seq=1, url="", subscription_id=None,
                          body=json.dumps({"type": "batch.completed"}))


def posts(server, path="/hook") -> list[dict]:
    return [r for r in server.requests if r["method"] == "POST" and r["path"] == path]


def subscribe(client, url, events=None, owner=None):
    body = {"url": url} if events is None else {"url": url, "events": events}
    headers = {"X-Test-Owner": owner} if owner else {}
    response = client.post("/api/v1/webhooks", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def answers(*statuses):
    """A route callable answering the given statuses in turn (the last one from then on)."""
    seen = []

    def route(_handler):
        seen.append(1)
        return Route(b'{"ok": false}', statuses[min(len(seen), len(statuses)) - 1])
    return route


# --- events and signing -----------------------------------------------------------------------

def test_upload_webhook_url_gets_one_signed_event(client, http_server, work, env):
    http_server.routes["/a.jpg"] = Route(jpeg(), headers={"Content-Type": "image/jpeg"})
    http_server.routes["/hook"] = Route(b"thanks", 204)
    text = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    batch = upload(client, text, webhook_url=http_server.url("/hook")).get_json()

    work()

    [sent] = posts(http_server)
    payload = Webhook(env.webhook_secret).verify(sent["body"], sent["headers"])
    assert payload["type"] == "batch.completed"
    assert payload["data"]["id"] == batch["id"] and payload["data"]["status"] == "completed"
    assert payload["data"]["sizes"] == batch["sizes"] and payload["data"]["full_size"] is True
    assert payload["data"]["links"]["outputs_zip"].endswith(f"/{batch['id']}/outputs.zip")
    assert payload["timestamp"].endswith("Z")
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["User-Agent"].startswith("Batchpress-Webhooks/")
    log = client.get(f"/api/v1/batches/{batch['id']}/deliveries").get_json()["items"]
    assert len(log) == 1
    delivery = log[0]
    assert delivery["id"] == sent["headers"]["webhook-id"]
    assert delivery["status"] == "succeeded" and delivery["event"] == "batch.completed"
    assert delivery["subscription_id"] is None and delivery["next_attempt_at"] is None
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] == 204 and attempt["error"] is None
    assert attempt["duration_ms"] >= 0 and attempt["at"].endswith("Z")
    stored = db.deliveries().find_one({"_id": delivery["id"]})
    assert stored["body"].encode() == sent["body"]


def test_subscriptions_get_the_events_they_asked_for_signed_with_their_secret(
        client, http_server, work, env):
    http_server.routes["/done"] = Route(b"", 200)
    http_server.routes["/failed"] = Route(b"", 200)
    done = subscribe(client, http_server.url("/done"), ["batch.completed"])
    failed = subscribe(client, http_server.url("/failed"), ["batch.failed", "batch.cancelled"])
    subscribe(client, http_server.url("/other-owner"), owner="someone-else")
    assert done["secret"].startswith("whsec_") and done["secret"] != failed["secret"]

    batch = finished_batch("failed")
    work()

    assert posts(http_server, "/done") == [] and posts(http_server, "/other-owner") == []
    [sent] = posts(http_server, "/failed")
    payload = Webhook(failed["secret"]).verify(sent["body"], sent["headers"])
    assert payload["type"] == "batch.failed" and payload["data"]["id"] == batch.id
    with pytest.raises(Exception):
        Webhook(done["secret"]).verify(sent["body"], sent["headers"])
    with pytest.raises(Exception):
        Webhook(env.webhook_secret).verify(sent["body"], sent["headers"])
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["subscription_id"] == failed["id"] and delivery["status"] == "succeeded"


def test_cancelled_batch_is_announced(http_server, work, env):
    http_server.routes["/hook"] = Route(b"", 200)
    finished_batch("cancelled", webhook_url=http_server.url("/hook"))
    work()
    [sent] = posts(http_server)
    assert Webhook(env.webhook_secret).verify(sent["body"], sent["headers"])["type"] == "batch.cancelled"


def test_exactly_one_event_per_finish_even_when_the_finish_runs_twice(client, http_server, work):
    http_server.routes["/hook"] = Route(b"", 204)
    http_server.routes["/sub"] = Route(b"", 204)
    subscribe(client, http_server.url("/sub"))
    batch = finished_batch("completed", webhook_url=http_server.url("/hook"))
    tasks.finish(batch)          # the finishing job ran again
    notify.batch_finished(batch)
    work()
    assert len(posts(http_server, "/hook")) == 1 and len(posts(http_server, "/sub")) == 1
    assert db.deliveries().count_documents({"batch_id": batch.id}) == 2

    # A later finish (after a retry, say) is a new event with a new webhook-id.
    db.batches().update_one({"_id": batch.id}, {"$inc": {"finish_seq": 1}})
    tasks.finish(stores.batches().get(batch.id, any_owner=True))
    work()
    hooks = posts(http_server, "/hook")
    assert len(hooks) == 2
    assert hooks[0]["headers"]["webhook-id"] != hooks[1]["headers"]["webhook-id"]


# --- delivery: retries, timeouts, redirects, 410 -----------------------------------------------

def test_a_500_is_retried_with_the_same_id_and_body(client, http_server, work, env, monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0,0,0,0,0")
    http_server.routes["/hook"] = answers(500, 204)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    work()

    first, second = posts(http_server)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    for sent in (first, second):
        Webhook(env.webhook_secret).verify(sent["body"], sent["headers"])
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 204]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    assert delivery["attempts"][0]["response"] == '{"ok": false}'
    assert delivery["attempts"][0]["next_attempt_at"] is not None
    assert delivery["attempts"][1]["next_attempt_at"] is None


def test_retry_waits_in_rqs_scheduler_and_survives_the_worker(client, http_server, work, env,
                                                             monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="1,1")
    http_server.routes["/hook"] = answers(503, 200)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    work()  # the first attempt fails; the retry waits in the scheduled-job registry (Redis)

    assert len(posts(http_server)) == 1
    stored = db.deliveries().find_one({"batch_id": batch.id})
    assert stored["status"] == "pending" and stored["next_attempt_no"] == 2
    due = stored["next_attempt_at"]
    registry = ScheduledJobRegistry(queues.WEBHOOKS, connection=queues.get_redis())
    assert registry.get_job_ids() == [f"webhook-{stored['_id']}-2"]
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "pending" and delivery["next_attempt_at"]

    time.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    from worker.runner import make_worker
    make_worker().work(burst=True, with_scheduler=True, logging_level="WARNING")

    assert len(posts(http_server)) == 2
    assert db.deliveries().find_one({"_id": stored["_id"]})["status"] == "succeeded"


def test_exhausted_delivery_is_failed_and_visible(client, http_server, work, monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0,0")
    http_server.routes["/hook"] = Route(b"x" * 5000, 500)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    work()
    assert len(posts(http_server)) == 3
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "failed" and delivery["next_attempt_at"] is None
    assert [a["number"] for a in delivery["attempts"]] == [1, 2, 3]
    assert all(len(a["response"]) <= 201 for a in delivery["attempts"])  # an excerpt only


def test_a_slow_receiver_times_out(client, http_server, work, monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0", WEBHOOK_TIMEOUT_S="0.3")

    def slow(_handler):
        time.sleep(1.0)
        return Route(b"", 204)
    http_server.routes["/hook"] = slow
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    began = time.monotonic()
    work()
    assert time.monotonic() - began < 3
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "failed"
    assert [a["error"] for a in delivery["attempts"]] == ["timed out after 0.3 s"] * 2
    assert all(a["status_code"] is None for a in delivery["attempts"])


def test_redirects_are_not_followed(client, http_server, work, monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0")
    http_server.routes["/hook"] = Route(b"", 302, headers={"Location": http_server.url("/there")})
    http_server.routes["/there"] = Route(b"", 200)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    work()
    assert posts(http_server, "/there") == [] and len(posts(http_server)) == 2
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "failed"
    assert "redirects are not followed" in delivery["attempts"][0]["error"]


def test_410_disables_the_subscription(client, http_server, work, monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0,0,0")
    http_server.routes["/gone"] = Route(b"", 410)
    sub = subscribe(client, http_server.url("/gone"))
    batch = finished_batch()
    work()
    assert len(posts(http_server, "/gone")) == 1  # no retry after 410
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "failed" and delivery["attempts"][0]["status_code"] == 410
    shown = client.get(f"/api/v1/webhooks/{sub['id']}").get_json()
    assert shown["enabled"] is False and "410" in shown["disabled_reason"]

    finished_batch()
    work()
    assert len(posts(http_server, "/gone")) == 1  # a disabled subscription gets nothing

    again = client.patch(f"/api/v1/webhooks/{sub['id']}", json={"enabled": True}).get_json()
    assert again["enabled"] is True and again["disabled_reason"] is None


def test_redeliver_sends_the_same_message_with_a_fresh_signature(client, http_server, work, env,
                                                                 monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0")
    http_server.routes["/hook"] = answers(500, 500, 204)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    work()
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["status"] == "failed"

    response = client.post(f"/api/v1/deliveries/{delivery['id']}/redeliver")
    assert response.status_code == 202 and response.get_json()["id"] == delivery["id"]
    work()

    sent = posts(http_server)
    assert len(sent) == 3
    assert {s["headers"]["webhook-id"] for s in sent} == {delivery["id"]}
    assert sent[2]["body"] == sent[0]["body"]
    Webhook(env.webhook_secret).verify(sent[2]["body"], sent[2]["headers"])
    after = client.get(f"/api/v1/deliveries/{delivery['id']}").get_json()
    assert after["status"] == "succeeded"
    assert [(a["manual"], a["status_code"]) for a in after["attempts"]] == [
        (False, 500), (False, 500), (True, 204)]

    assert_problem(client.post("/api/v1/deliveries/msg_nope/redeliver"), 404, "not-found")
    assert_problem(client.post(f"/api/v1/deliveries/{delivery['id']}/redeliver",
                               headers={"X-Test-Owner": "someone-else"}), 404)


def test_redelivery_is_rate_limited_per_caller(http_server, work, monkeypatch):
    set_env(monkeypatch, WEBHOOK_RETRY_SCHEDULE="0", REDELIVER_RATE="2/minute")
    from api import create_app
    client = create_app(settings_module.get_settings()).test_client()
    http_server.routes["/hook"] = Route(b"", 204)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    work()
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    url = f"/api/v1/deliveries/{delivery['id']}/redeliver"
    assert [client.post(url).status_code for _ in range(2)] == [202, 202]
    refused = client.post(url)
    problem = assert_problem(refused, 429, "rate-limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert problem["retry_after"] == int(refused.headers["Retry-After"])
    assert "2/minute" in problem["detail"]
    other = client.post(url, environ_base={"REMOTE_ADDR": "127.0.0.9"})  # another caller
    assert other.status_code == 202
    work()
    assert len(posts(http_server)) == 4  # the first send and three redeliveries, not four


def test_slow_receivers_take_turns_with_image_work(client, http_server, monkeypatch):
    # Three deliveries to a receiver that drips its answer (each attempt runs to its 0.5 s
    # limit) wait before a batch; a worker on every queue, as production runs it, finishes
    # the batch before it has sent all three.
    set_env(monkeypatch, WEBHOOK_TIMEOUT_S="0.5")
    receiver = DripServer("close", "body")
    try:
        for _ in range(3):
            finished_batch(webhook_url=receiver.url("/hook"))
        http_server.routes["/a.jpg"] = Route(jpeg())
        batch = upload(client, "S. No.,Product Name,Input Image Urls\n"
                               f"1,Mug,{http_server.url('/a.jpg')}\n").get_json()
        from worker.runner import DEQUEUE_STRATEGY, make_worker
        make_worker().work(burst=True, logging_level="WARNING", dequeue_strategy=DEQUEUE_STRATEGY)
    finally:
        receiver.stop()
    done = stores.batches().get(batch["id"], any_owner=True)
    assert done.status.value == "completed"
    assert len(receiver.requests) >= 3
    assert done.finished_at.timestamp() < receiver.request_times[2]


def test_a_lost_scheduled_job_is_recovered_from_mongodb(http_server, work, monkeypatch):
    http_server.routes["/hook"] = Route(b"", 204)
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    queues.get_redis().flushdb()  # Redis lost the queued attempt
    work()
    assert posts(http_server) == []
    assert webhook_delivery.recover_overdue() == 0  # not overdue yet: within the grace period
    db.deliveries().update_one({"batch_id": batch.id},
                               {"$set": {"next_attempt_at": datetime(2020, 1, 1, tzinfo=timezone.utc)}})
    assert webhook_delivery.recover_overdue() == 1
    jobs.enqueue_webhook_attempt(  # a duplicate job for the same attempt sends nothing more
        db.deliveries().find_one({"batch_id": batch.id})["_id"], 1)
    work()
    assert len(posts(http_server)) == 1
    assert db.deliveries().find_one({"batch_id": batch.id})["status"] == "succeeded"


# --- secrets ------------------------------------------------------------------------------------

def test_rotated_secret_signs_alongside_the_old_one(client, http_server, work):
    http_server.routes["/sub"] = Route(b"", 204)
    sub = subscribe(client, http_server.url("/sub"))
    listed = client.get("/api/v1/webhooks").get_json()["items"]
    assert [s["id"] for s in listed] == [sub["id"]] and "secret" not in listed[0]

    response = client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret")
    assert response.status_code == 200
    rotated = response.get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != sub["secret"]
    assert rotated["previous_secret_expires_at"]

    finished_batch()
    work()
    [sent] = posts(http_server, "/sub")
    assert len(sent["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (sub["secret"], rotated["secret"]):
        Webhook(secret).verify(sent["body"], sent["headers"])

    # After the overlap only the new secret signs.
    db.subscriptions().update_one({"_id": sub["id"]}, {"$set": {
        "previous_secret_expires_at": datetime(2020, 1, 1, tzinfo=timezone.utc)}})
    finished_batch()
    work()
    latest = posts(http_server, "/sub")[-1]
    assert len(latest["headers"]["webhook-signature"].split(" ")) == 1
    Webhook(rotated["secret"]).verify(latest["body"], latest["headers"])


# --- subscription API and URL safety ------------------------------------------------------------

def test_subscription_crud_and_errors(client, http_server):
    sub = subscribe(client, http_server.url("/x"))
    assert sub["events"] == list(EVENTS) and sub["enabled"] is True
    assert client.get(f"/api/v1/webhooks/{sub['id']}", headers={"X-Test-Owner": "b"}).status_code == 404
    assert client.get("/api/v1/webhooks", headers={"X-Test-Owner": "b"}).get_json()["items"] == []
    assert_problem(client.delete(f"/api/v1/webhooks/{sub['id']}", headers={"X-Test-Owner": "b"}), 404)
    assert client.delete(f"/api/v1/webhooks/{sub['id']}").status_code == 204
    assert_problem(client.get(f"/api/v1/webhooks/{sub['id']}"), 404, "not-found")
    assert_problem(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"), 404)

    url = http_server.url("/x")
    assert_problem(client.post("/api/v1/webhooks", json={"url": url, "events": ["batch.done"]}),
                   422, "invalid-events")
    assert_problem(client.post("/api/v1/webhooks", json={"url": url, "events": []}), 422)
    assert_problem(client.post("/api/v1/webhooks", json={"events": ["batch.failed"]}), 422)
    assert_problem(client.post("/api/v1/webhooks", json={"url": "ftp://x/y"}), 422,
                   "invalid-webhook-url")
    assert_problem(client.post("/api/v1/webhooks", data="url=x"), 415)
    assert_problem(client.post("/api/v1/webhooks", data="[1]", content_type="application/json"), 400)
    assert_problem(client.get("/api/v1/batches/bat_nope/deliveries"), 404)


def test_subscription_bodies_are_read_through_their_models(client, http_server):
    url = http_server.url("/x")
    body = assert_problem(client.post("/api/v1/webhooks", json={"url": url, "secret": "mine"}),
                          422, "unknown-field")
    assert body["field"] == "secret" and "'secret'" in body["detail"]
    assert client.get("/api/v1/webhooks").get_json()["items"] == []  # nothing was created
    sub = subscribe(client, url)
    patch = f"/api/v1/webhooks/{sub['id']}"
    for change, kind, field in [({"enabld": False}, "unknown-field", "enabld"),
                                ({"url": None}, "invalid-webhook-url", "url"),
                                ({"url": ""}, "invalid-webhook-url", "url"),
                                ({"enabled": "false"}, "invalid-field", "enabled"),
                                ({"events": None}, "invalid-events", "events"),
                                ({"description": "d" * 501}, "invalid-field", "description")]:
        body = assert_problem(client.patch(patch, json=change), 422, kind)
        assert body["field"] == field, change
    assert client.get(patch).get_json()["enabled"] is True  # none of them changed anything
    changed = client.patch(patch, json={"description": None, "enabled": False}).get_json()
    assert changed["enabled"] is False and changed["description"] is None
    assert_problem(client.patch(patch, data="[]", content_type="application/json"), 400)


def test_a_json_body_nested_too_deeply_is_400(client):
    body = "[" * 5000 + "]" * 5000
    for deep in (body, '{"url": ' + body + "}"):
        problem = assert_problem(client.post("/api/v1/webhooks", data=deep,
                                             content_type="application/json"), 400, "invalid-json")
        assert "nested too deeply" in problem["detail"]


def test_url_is_checked_again_when_sending(client, http_server, work, monkeypatch):
    http_server.routes["/hook"] = Route(b"", 204)
    sub = subscribe(client, http_server.url("/hook"))
    refuse_private_urls(monkeypatch, client, WEBHOOK_RETRY_SCHEDULE="0")
    batch = finished_batch()
    work()
    assert posts(http_server) == []
    [delivery] = client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]
    assert delivery["subscription_id"] == sub["id"] and delivery["status"] == "failed"
    assert all(a["error"].startswith("refused") for a in delivery["attempts"])


def test_hardened_session_refuses_a_private_address_after_dns(env, http_server):
    """The send-time guard itself: requests-hardened blocks loopback (resolved) addresses."""
    settings = env.model_copy(update={"allow_private_urls": False})
    delivery = a_delivery("msg_x")
    outcome = webhook_delivery.send(delivery, f"https://localhost:{http_server.port}/hook",
                                    [env.webhook_secret], settings)
    assert outcome["error"].startswith("refused") and "status_code" not in outcome
    assert http_server.requests == []


def test_default_schedule_meets_the_contract(env, monkeypatch):
    monkeypatch.delenv("WEBHOOK_RETRY_SCHEDULE", raising=False)
    settings_module.get_settings.cache_clear()
    settings = settings_module.get_settings()
    assert webhook_delivery.max_attempts(settings) >= 6
    shortest = [webhook_delivery.retry_delay(settings, n) for n in range(1, len(settings.retry_delays) + 1)]
    assert 0 < shortest[0] <= 30                     # the first retry within 30 s
    assert sum(shortest[:5]) >= 3600                 # the 6th attempt an hour or more after the 1st
    assert all(b > a for a, b in zip(shortest, shortest[1:4]))  # growing


# --- through the real endpoints: cancel and retry announce their finishes -----------------------

def test_cancel_and_retry_through_the_api_announce_each_finish(client, http_server, work, env):
    http_server.routes["/hook"] = Route(b"", 204)
    text = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    queued = upload(client, text, webhook_url=http_server.url("/hook")).get_json()
    assert client.post(f"/api/v1/batches/{queued['id']}/cancel").status_code == 200
    work()
    [cancelled] = posts(http_server)
    assert Webhook(env.webhook_secret).verify(
        cancelled["body"], cancelled["headers"])["type"] == "batch.cancelled"

    batch = upload(client, text, webhook_url=http_server.url("/hook")).get_json()
    work()  # /a.jpg is missing: every image fails
    first = Webhook(env.webhook_secret).verify(posts(http_server)[-1]["body"],
                                               posts(http_server)[-1]["headers"])
    assert first["type"] == "batch.failed" and first["data"]["id"] == batch["id"]

    http_server.routes["/a.jpg"] = Route(jpeg(), headers={"Content-Type": "image/jpeg"})
    assert client.post(f"/api/v1/batches/{batch['id']}/retry").status_code == 202
    work()
    sent = posts(http_server)
    assert len(sent) == 3
    second = Webhook(env.webhook_secret).verify(sent[-1]["body"], sent[-1]["headers"])
    assert second["type"] == "batch.completed"
    assert sent[-1]["headers"]["webhook-id"] != sent[-2]["headers"]["webhook-id"]
    log = client.get(f"/api/v1/batches/{batch['id']}/deliveries").get_json()["items"]
    assert [d["event"] for d in log] == ["batch.failed", "batch.completed"]


@pytest.mark.parametrize("framing,drip", [(f, "body") for f in DripServer.FRAMINGS]
                         + [("http1.0", "headers"), ("keep-alive", "headers")])
def test_an_attempt_has_a_deadline_over_the_whole_answer(env, framing, drip):
    # A 200 whose answer drips in for 5 s; the attempt's limit is 0.5 s.
    receiver = DripServer(framing, drip)
    settings = env.model_copy(update={"webhook_timeout_s": 0.5})
    try:
        delivery = a_delivery("msg_drip")
        outcome = webhook_delivery.send(delivery, receiver.url("/hook"),
                                        [env.webhook_secret], settings)
        assert receiver.cut.wait(3), "the receiver was not cut off at the deadline"
    finally:
        receiver.stop()
    assert outcome["error"] == "timed out after 0.5 s" and "status_code" not in outcome
    assert not webhook_delivery._ok(outcome)
    assert b"webhook-signature" in receiver.requests[0]


def test_a_receiver_that_refuses_connections_is_named_like_an_image_server(env):
    from tests.servers import free_port
    outcome = webhook_delivery.send(a_delivery("msg_refused"),
                                    f"http://127.0.0.1:{free_port()}/hook", [env.webhook_secret],
                                    env)
    assert outcome["error"] == "connection refused by 127.0.0.1"
    assert not webhook_delivery._ok(outcome)


def test_every_timestamp_has_one_format_milliseconds_and_z(client, http_server, work, env):
    import re
    iso_ms = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    http_server.routes["/hook"] = Route(b"", 204)
    subscribe(client, http_server.url("/hook"))
    batch = finished_batch(webhook_url=http_server.url("/hook"))
    stamp = datetime(2026, 11, 22, 10, 0, 0, 251000, tzinfo=timezone.utc)
    db.batches().update_one({"_id": batch.id}, {"$set": {"created_at": stamp}})
    work()

    shown = client.get(f"/api/v1/batches/{batch.id}").get_json()
    assert shown["created_at"] == "2026-11-22T10:00:00.251Z"
    found = []
    for name in ("created_at", "started_at", "finished_at"):
        found.append(shown[name])
    for sent in posts(http_server):
        body = json.loads(sent["body"])
        found += [body["timestamp"], body["data"]["created_at"], body["data"]["finished_at"]]
    [sub] = client.get("/api/v1/webhooks").get_json()["items"]
    found.append(sub["created_at"])
    for delivery in client.get(f"/api/v1/batches/{batch.id}/deliveries").get_json()["items"]:
        found += [delivery["created_at"]] + [a["at"] for a in delivery["attempts"]]
    assert len(found) >= 12
    assert [t for t in found if not iso_ms.match(t)] == []
    round_ms = stamp.replace(microsecond=0)  # a whole second still shows its milliseconds
    db.batches().update_one({"_id": batch.id}, {"$set": {"created_at": round_ms}})
    shown = client.get(f"/api/v1/batches/{batch.id}").get_json()
    assert shown["created_at"] == "2026-11-22T10:00:00.000Z"
