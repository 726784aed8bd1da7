"""The RQ dashboard at /rq (api/dashboard.py): off without credentials, behind basic auth."""
from __future__ import annotations

from infra import queues
from tests.helpers import CSV, basic, log_in_a_job, make_app
from tests.test_flow import upload


def test_dashboard_is_off_without_credentials(client):
    assert client.get("/rq/").status_code == 404
    assert "rq_dashboard" not in client.application.blueprints


def test_dashboard_needs_basic_auth_and_shows_jobs(env, monkeypatch):
    app = make_app(monkeypatch, DASHBOARD_USER="ops", DASHBOARD_PASSWORD="s3cret-pass")
    client = app.test_client()
    response = upload(client, CSV)
    assert response.status_code == 202
    job_id = f"{response.get_json()['id']}-parse"

    for headers in ({}, basic("ops", "wrong"), basic("other", "s3cret-pass")):
        denied = client.get("/rq/", headers=headers)
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith('Basic realm="')
        assert denied.mimetype == "application/problem+json"
        assert denied.get_json()["status"] == 401
        assert denied.get_json()["type"] == "/problems/unauthorized"
    assert client.get("/rq/0/data/queues.json").status_code == 401

    auth = basic("ops", "s3cret-pass")
    page = client.get("/rq/", headers=auth)
    assert page.status_code == 200 and b"RQ" in page.data
    queues_json = client.get("/rq/0/data/queues.json", headers=auth).get_json()
    counts = {q["name"]: q["count"] for q in queues_json["queues"]}
    assert counts["batches"] == 1
    jobs = client.get("/rq/0/data/jobs/batches/queued/8/asc/1.json", headers=auth).get_json()
    assert [j["id"] for j in jobs["jobs"]] == [job_id]
    assert client.get(f"/rq/0/view/job/{job_id}", headers=auth).status_code == 200
    assert client.get(f"/rq/0/data/job/{job_id}.json", headers=auth).get_json()["id"] == job_id
    assert client.get("/rq/0/view/workers", headers=auth).status_code == 200

    # No CSRF protection of its own: a change needs this very site as Origin/Referer.
    refused = client.post(f"/rq/job/{job_id}/delete", headers=auth)
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    assert refused.get_json()["status"] == 403 and "WWW-Authenticate" not in refused.headers
    assert client.post(f"/rq/job/{job_id}/delete", headers={
        **auth, "Origin": "https://evil.example"}).status_code == 403
    assert client.get("/rq/requeue/failed", headers=auth).status_code == 403
    assert client.post(f"/rq/job/{job_id}/delete", headers={
        **auth, "Origin": "http://localhost"}).status_code == 200
    assert queues.get_queue("batches").count == 0


def test_dashboard_works_on_the_embedded_in_memory_redis(env, monkeypatch):
    from infra import embedded
    queues.use_connection(embedded.in_memory_redis())
    client = make_app(monkeypatch, DASHBOARD_USER="ops", DASHBOARD_PASSWORD="pw-123456") \
        .test_client()
    queues.get_queue("images").enqueue(log_in_a_job, "bat_emb", job_id="bat_emb-chunk-0")
    auth = basic("ops", "pw-123456")
    assert client.get("/rq/", headers=auth).status_code == 200
    counts = {q["name"]: q["count"] for q in
              client.get("/rq/0/data/queues.json", headers=auth).get_json()["queues"]}
    assert counts == {"images": 1}
    assert client.get("/rq/0/view/job/bat_emb-chunk-0", headers=auth).status_code == 200
    assert client.get("/readyz").get_json()["checks"]["redis"] == "ok"


def test_dashboard_opens_with_the_admin_api_key(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS="admin:adm_key_123456,alice:ak_123456").test_client()
    assert client.get("/rq/", headers=basic("admin", "adm_key_123456")).status_code == 200
    assert client.get("/rq/", headers=basic("alice", "ak_123456")).status_code == 401
    assert client.get("/rq/", headers=basic("admin", "ak_123456")).status_code == 401
