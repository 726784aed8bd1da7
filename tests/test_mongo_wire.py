"""The MongoDB wire stand-in: the service's stores through real pymongo clients over TCP."""
from __future__ import annotations

import io
import threading

import pymongo
import pytest
from pymongo.errors import DuplicateKeyError

from infra import db, stores
from schemas.records import IdempotencyRecord
from tests.servers import Route
from tests.test_flow import jpeg, read_csv


@pytest.fixture()
def wire_client(wire_env):
    from api import create_app
    app = create_app(wire_env)
    app.config["TESTING"] = True
    return app.test_client()


def upload(client, text: str, headers: dict | None = None):
    return client.post("/api/v1/batches", headers=headers or {},
                       data={"file": (io.BytesIO(text.encode()), "products.csv")},
                       content_type="multipart/form-data")


def test_a_batch_runs_end_to_end_on_the_wire_stand_in(wire_client, mongo_wire, http_server,
                                                       work):
    http_server.routes["/a.jpg"] = Route(jpeg(40, 30))
    http_server.routes["/b.jpg"] = Route(jpeg(20, 10))
    a, b, missing = (http_server.url(p) for p in ("/a.jpg", "/b.jpg", "/none.jpg"))
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Mug,"{a},{b}"\n2,Cup,"{missing},{a}"\n3,,{a}\n')
    before = dict(mongo_wire.commands)
    created = upload(wire_client, text)
    assert created.status_code == 202, created.get_json()
    work()
    batch = wire_client.get(f"/api/v1/batches/{created.get_json()['id']}").get_json()
    assert batch["status"] == "completed_with_errors"
    assert batch["rows"] == {"total": 3, "valid": 2, "invalid": 1, "done_reading": True}
    assert batch["images"] == {"total": 4, "processed": 3, "failed": 1, "reused": 0}
    rows = read_csv(wire_client.get(batch["links"]["output_csv"]))
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"] and rows[2][3].startswith(",http")
    # The stores' writes really went over the wire (none of them in this process's mongomock).
    sent = {name: mongo_wire.commands.get(name, 0) - before.get(name, 0)
            for name in ("insert", "update", "find", "findAndModify")}
    assert all(count > 0 for count in sent.values()), sent
    assert isinstance(db.get_client(), pymongo.MongoClient)


def test_listing_reads_past_the_first_cursor_batch(wire_client, mongo_wire, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg())
    rows = "".join(f"{n},Item {n},{http_server.url('/a.jpg')}\n" for n in range(1, 131))
    created = upload(wire_client, "S. No.,Product Name,Input Image Urls\n" + rows).get_json()
    work()
    before = mongo_wire.commands.get("getMore", 0)
    page = wire_client.get(f"/api/v1/batches/{created['id']}/products?limit=500").get_json()
    assert [p["serial_no"] for p in page["items"]] == list(range(1, 131))
    assert mongo_wire.commands.get("getMore", 0) > before  # 101 in the first batch, then more
    assert len(http_server.requests) == 1  # one URL in 130 rows is fetched once


def test_duplicate_keys_raise_pymongos_own_error(wire_env):
    db.ensure_indexes()
    db.products().insert_one({"batch_id": "b1", "line": 2})
    with pytest.raises(DuplicateKeyError) as raised:
        db.products().insert_one({"batch_id": "b1", "line": 2})
    assert raised.value.code == 11000
    claims = []
    barrier = threading.Barrier(4)

    def claim():
        barrier.wait()
        claims.append(stores.idempotency().claim(IdempotencyRecord.new(
            "alice", "key-1", batch_id="bat_x", fingerprint="f")))
    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(claim is not None for claim in claims) == [False, False, False, True]
    assert db.idempotency_keys().count_documents({}) == 1


def test_an_outage_answers_503_naming_mongodb_and_the_data_comes_back(wire_client, mongo_wire,
                                                                       http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg())
    created = upload(wire_client, f"S. No.,Product Name,Input Image Urls\n1,Mug,"
                                  f"{http_server.url('/a.jpg')}\n").get_json()
    work()
    path = f"/api/v1/batches/{created['id']}"
    done = wire_client.get(path).get_json()
    mongo_wire.stop()
    down = wire_client.get(path)
    assert down.status_code == 503 and down.mimetype == "application/problem+json"
    assert down.get_json()["service"] == "MongoDB" and down.headers["Retry-After"]
    listing = wire_client.get("/api/v1/batches")
    assert listing.status_code == 503 and listing.get_json()["service"] == "MongoDB"
    ready = wire_client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["failed"] == ["mongodb"]
    mongo_wire.start()
    assert wire_client.get(path).get_json() == done
