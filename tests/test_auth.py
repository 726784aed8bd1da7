"""API keys (api/auth.py, infra/api_keys.py): required on every call, each key sees only its own."""
from __future__ import annotations

import logging

import pytest

from infra import db
from tests.helpers import CSV, bearer, make_app
from tests.servers import Route


KEYS = "alice:ak_0123456789abcdef,bob:bk_fedcba9876543210"


def test_without_keys_the_api_is_open_and_warns(env, caplog):
    from api import create_app
    with caplog.at_level(logging.WARNING):
        app = create_app(env)
    assert any("API_KEYS is not set" in r.getMessage() for r in caplog.records)
    client = app.test_client()
    assert client.get("/api/v1/batches").status_code == 200


def test_keys_are_required_on_every_api_call(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    for headers in ({}, bearer("nope"), {"Authorization": "Basic ak_0123456789abcdef"},
                    {"Authorization": "Bearer"}):
        response = client.get("/api/v1/batches", headers=headers)
        assert response.status_code == 401, headers
        assert response.mimetype == "application/problem+json"
        body = response.get_json()
        assert body["status"] == 401 and body["type"].endswith("unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # An unknown route under /api/v1 does not tell whether it exists either.
    assert client.get("/api/v1/nothing-here").status_code == 401
    # Nor whether its query would have been refused.
    assert client.get("/api/v1/batches?limit=1&limit=2").status_code == 401
    assert client.post("/api/v1/batches", data=CSV, content_type="text/csv").status_code == 401
    assert client.get("/api/v1/batches", headers=bearer("ak_0123456789abcdef")).status_code == 200
    # Outside /api/v1 nothing needs a key.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_each_key_sees_only_its_own_batches(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    created = client.post("/api/v1/batches", data=CSV, content_type="text/csv", headers=alice)
    assert created.status_code == 202
    batch_id = created.get_json()["id"]
    assert db.batches().find_one({"_id": batch_id})["owner"] == "alice"

    assert client.get(f"/api/v1/batches/{batch_id}", headers=alice).status_code == 200
    for path in (f"/api/v1/batches/{batch_id}", f"/api/v1/batches/{batch_id}/products",
                 f"/api/v1/batches/{batch_id}/output.csv", f"/api/v1/batches/{batch_id}/errors.csv",
                 f"/api/v1/batches/{batch_id}/deliveries"):
        response = client.get(path, headers=bob)
        assert response.status_code == 404, path  # never 403: ids cannot be probed
    assert client.post(f"/api/v1/batches/{batch_id}/cancel", headers=bob).status_code == 404
    assert client.get("/api/v1/batches", headers=bob).get_json()["items"] == []
    assert [b["id"] for b in client.get("/api/v1/batches", headers=alice).get_json()["items"]] \
        == [batch_id]


def test_each_key_sees_only_its_own_webhook_subscriptions(env, monkeypatch):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    created = client.post("/api/v1/webhooks", json={"url": "https://example.com/hook",
                                                    "events": ["batch.completed"]}, headers=alice)
    assert created.status_code == 201, created.get_json()
    sub_id = created.get_json()["id"]
    assert client.get("/api/v1/webhooks", headers=bob).get_json()["items"] == []
    assert client.delete(f"/api/v1/webhooks/{sub_id}", headers=bob).status_code == 404
    assert client.post(f"/api/v1/webhooks/{sub_id}/rotate-secret", headers=bob).status_code == 404
    assert [s["id"] for s in client.get("/api/v1/webhooks", headers=alice).get_json()["items"]] \
        == [sub_id]


def test_each_key_sees_only_its_own_deliveries(env, monkeypatch, http_server, work):
    client = make_app(monkeypatch, API_KEYS=KEYS).test_client()
    alice, bob = bearer("ak_0123456789abcdef"), bearer("bk_fedcba9876543210")
    http_server.routes["/hook"] = Route(b"ok")
    text = "S. No.,Product Name,Input Image Urls\n1,,http://x/y.jpg\n"  # fails at once
    created = client.post(f"/api/v1/batches?webhook_url={http_server.url('/hook')}", data=text,
                          content_type="text/csv", headers=alice)
    assert created.status_code == 202, created.get_json()
    batch_id = created.get_json()["id"]
    work()
    deliveries = client.get(f"/api/v1/batches/{batch_id}/deliveries", headers=alice).get_json()
    assert len(deliveries["items"]) == 1
    delivery_id = deliveries["items"][0]["id"]
    assert client.get(f"/api/v1/deliveries/{delivery_id}", headers=alice).status_code == 200
    assert client.get(f"/api/v1/deliveries/{delivery_id}", headers=bob).status_code == 404
    assert client.post(f"/api/v1/deliveries/{delivery_id}/redeliver",
                       headers=bob).status_code == 404
    assert client.get(f"/api/v1/batches/{batch_id}/deliveries", headers=bob).status_code == 404


def test_keys_from_a_file(env, monkeypatch, tmp_path):
    path = tmp_path / "keys"
    path.write_text("# operators' keys\n\ncarol: ck_abcdefabcdef\n")
    client = make_app(monkeypatch, API_KEYS=str(path)).test_client()
    assert client.get("/api/v1/batches", headers=bearer("ck_abcdefabcdef")).status_code == 200
    assert client.get("/api/v1/batches", headers=bearer("abcdefabcdef")).status_code == 401


def test_parse_keys_refuses_malformed_values(tmp_path):
    from infra.api_keys import ApiKeyError, parse_keys
    keys = parse_keys(" a:one1 , b:two2 ")
    assert keys.names == ["a", "b"]
    assert keys.owner_of("two2") == "b" and keys.owner_of("two") is None
    assert not parse_keys(None) and not parse_keys("")
    rotating = parse_keys("a:old1,a:new2,b:k3")  # one owner, two keys while rotating
    assert rotating.names == ["a", "b"]
    assert rotating.owner_of("old1") == rotating.owner_of("new2") == "a"
    for bad in ("justakey", "a:", ":k", "a:k1,b:k1", str(tmp_path / "missing")):
        with pytest.raises(ApiKeyError) as error:
            parse_keys(bad)
        assert "k1" not in str(error.value) and "k2" not in str(error.value)


def test_malformed_keys_stop_the_start(env, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        make_app(monkeypatch, API_KEYS="alice")
    assert "API_KEYS" in str(stop.value)
