"""Listing batches (GET /batches): status and created-time filters."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from infra import db
from tests.batch_helpers import csv_text, problem, serve_images, upload


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
    assert problem(client.get("/api/v1/batches?status=bogus"), 400)["detail"].endswith(
        "got 'bogus'")
    assert problem(client.get("/api/v1/batches?limit=abc"), 400)["detail"] == \
        "limit must be a whole number from 1 to 500, got 'abc'"
    problem(client.get("/api/v1/batches?created_after=yesterday"), 400)
    problem(client.get("/api/v1/batches?created_before=2026-11-20T12:00:00"), 400)
    repeated = problem(client.get("/api/v1/batches?status=queued&limit=1&limit=2"), 400)
    assert repeated["parameter"] == "limit" and "'limit' given more than once" in repeated["detail"]


def test_a_repeated_parameter_on_a_path_no_route_serves_is_still_a_404(client):
    problem(client.get("/api/v1/nothing-here?limit=1&limit=2"), 404)
