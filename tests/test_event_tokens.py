"""Events-stream tokens for browsers: bound to one batch and key, never the API key in a URL."""
from __future__ import annotations

import io

import pytest

from infra import settings as settings_module

KEYS = "alice:key-alice-123456,bob:key-bob-1234567"
ALICE, BOB = {"Authorization": "Bearer key-alice-123456"}, {"Authorization": "Bearer key-bob-1234567"}
CSV = b"S. No.,Product Name,Input Image Urls\n1,Mug,http://127.0.0.1:9/x.jpg\n"


@pytest.fixture()
def keyed(monkeypatch, env):
    monkeypatch.setenv("API_KEYS", KEYS)
    settings_module.get_settings.cache_clear()
    from api import create_app
    return create_app(settings_module.get_settings()).test_client()


def _batch(client, headers) -> str:
    response = client.post("/api/v1/batches", headers=headers, content_type="multipart/form-data",
                           data={"file": (io.BytesIO(CSV), "p.csv")})
    assert response.status_code == 202
    return response.get_json()["id"]


def test_a_token_opens_that_batchs_events_stream_and_nothing_else(keyed, work):
    mine, other = _batch(keyed, ALICE), _batch(keyed, ALICE)
    work()  # both finish (their image fails), so the stream ends after its final event
    grant = keyed.post(f"/api/v1/batches/{mine}/events-token", headers=ALICE).get_json()
    assert grant["expires_in"] == 300 and grant["token"]
    assert grant["events_url"] == f"/api/v1/batches/{mine}/events?token={grant['token']}"

    stream = keyed.get(grant["events_url"])
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    assert "event: status" in stream.get_data(as_text=True)

    token = grant["token"]
    for path in (f"/api/v1/batches/{other}/events?token={token}",   # another batch
                 f"/api/v1/batches/{mine}?token={token}",            # not the events stream
                 f"/api/v1/batches/{mine}/events?token=key-alice-123456",  # the key itself
                 f"/api/v1/batches/{mine}/events?token={token[:-2]}xx"):
        refused = keyed.get(path)
        assert refused.status_code == 401, path
        assert refused.mimetype == "application/problem+json"
    assert "events token" in refused.get_json()["detail"]


def test_another_keys_batch_gets_no_token(keyed):
    bobs = _batch(keyed, BOB)
    assert keyed.post(f"/api/v1/batches/{bobs}/events-token", headers=ALICE).status_code == 404
    assert keyed.post(f"/api/v1/batches/{bobs}/events-token").status_code == 401


def test_without_keys_no_token_is_needed(client):
    batch = _batch(client, {})
    grant = client.post(f"/api/v1/batches/{batch}/events-token").get_json()
    assert grant == {"token": None, "expires_in": None,
                     "events_url": f"/api/v1/batches/{batch}/events"}


def test_an_expired_token_is_refused(keyed, monkeypatch):
    import itsdangerous.timed
    batch = _batch(keyed, ALICE)
    real_time = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: real_time() - 301)
    grant = keyed.post(f"/api/v1/batches/{batch}/events-token", headers=ALICE).get_json()
    monkeypatch.setattr(itsdangerous.timed.time, "time", real_time)
    expired = keyed.get(grant["events_url"])
    assert expired.status_code == 401 and "expired" in expired.get_json()["detail"]
