"""Polite fetching: per-host download slots across workers, Retry-After waits that hold no
thread, retries of 5xx and connection failures, and 4xx failing at once."""
from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from rq.scheduler import RQScheduler

from infra import host_slots, queues, settings as settings_module
from schemas.retry_after import retry_after_seconds
from tests.servers import Route
from tests.test_control import csv_text, get, jpeg, serve_images, upload
from worker import tasks


def _images(client, batch_id: str) -> list[dict]:
    body = client.get(f"/api/v1/batches/{batch_id}/products?limit=100").get_json()
    return [image for product in body["items"] for image in product["images"]]


def _run_scheduled(work, until: float) -> None:
    """Wait until `until` (time.time()), move due scheduled jobs to their queue, and work."""
    time.sleep(max(0.0, until - time.time()))
    scheduler = RQScheduler([queues.IMAGES], connection=queues.get_redis())
    scheduler.prepare_registries([queues.IMAGES])
    scheduler.enqueue_scheduled_jobs()
    work()


def _throttling(times: int, retry_after: str = "1"):
    """A route answering 429 with Retry-After for the first `times` requests, then the image."""
    seen: list[float] = []

    def route(handler):
        seen.append(time.time())
        if len(seen) <= times:
            return Route(b"slow down", 429, headers={"Retry-After": retry_after})
        return Route(jpeg((10, 120, 200)), headers={"Content-Type": "image/jpeg"})
    return route, seen


def test_retry_after_waits_without_holding_a_worker_then_succeeds(client, http_server, work):
    route, seen = _throttling(2)
    http_server.routes["/busy.jpg"] = route
    batch = upload(client, csv_text([[http_server.url("/busy.jpg")]])).get_json()

    work()  # returns: the image waits in RQ's scheduler, not in a thread
    assert get(client, batch["id"])["status"] == "processing"
    assert _images(client, batch["id"])[0]["status"] == "pending"
    assert len(seen) == 1

    for _ in range(2):
        _run_scheduled(work, seen[-1] + 1.05)
    done = get(client, batch["id"])
    assert done["status"] == "completed", done
    assert len(seen) == 3
    assert all(later - earlier >= 1.0 for earlier, later in zip(seen, seen[1:]))


def test_waits_past_max_retry_after_fail_saying_what_happened(client, http_server, work,
                                                             monkeypatch):
    monkeypatch.setenv("MAX_RETRY_AFTER_S", "1.5")
    settings_module.get_settings.cache_clear()
    route, seen = _throttling(100)
    http_server.routes["/never.jpg"] = route
    batch = upload(client, csv_text([[http_server.url("/never.jpg")]])).get_json()

    work()
    _run_scheduled(work, seen[-1] + 1.05)
    done = get(client, batch["id"])
    assert done["status"] == "failed", done  # its only image failed
    image = _images(client, batch["id"])[0]
    assert image["code"] == "http_status"
    assert re.fullmatch(r"HTTP 429 from 127\.0\.0\.1 2 times over 1 s", image["error"]), image
    assert len(seen) == 2


def test_5xx_is_tried_again_and_4xx_fails_at_once(client, http_server, work):
    answers = {"flaky": 0, "gone": 0}

    def flaky(handler):
        answers["flaky"] += 1
        if answers["flaky"] <= 2:
            return Route(b"bad gateway", 502)
        return Route(jpeg((200, 0, 0)), headers={"Content-Type": "image/jpeg"})

    def gone(handler):
        answers["gone"] += 1
        return Route(b"no such image", 404)
    http_server.routes["/flaky.jpg"] = flaky
    http_server.routes["/gone.jpg"] = gone
    batch = upload(client, csv_text([[http_server.url("/flaky.jpg")],
                                     [http_server.url("/gone.jpg")]])).get_json()
    work()
    done = get(client, batch["id"])
    assert done["images"] == {"total": 2, "processed": 1, "failed": 1, "reused": 0}, done
    assert answers == {"flaky": 3, "gone": 1}
    failed = [im for im in _images(client, batch["id"]) if im["status"] == "failed"]
    assert failed[0]["error"] == "HTTP 404 from 127.0.0.1"


def test_5xx_every_time_fails_after_the_retries(client, http_server, work):
    http_server.routes["/down.jpg"] = Route(b"down", 500)
    batch = upload(client, csv_text([[http_server.url("/down.jpg")]])).get_json()
    work()
    image = _images(client, batch["id"])[0]
    assert image["error"] == "HTTP 500 from 127.0.0.1 (3 tries)"
    assert sum(r["path"] == "/down.jpg" for r in http_server.requests) == 3


def test_downloads_per_host_never_exceed_the_limit_across_workers(client, http_server, env,
                                                                  monkeypatch):
    monkeypatch.setenv("PER_HOST_CONCURRENCY", "2")
    monkeypatch.setenv("IMAGE_CONCURRENCY", "4")
    monkeypatch.setenv("CHUNK_SIZE", "4")
    settings_module.get_settings.cache_clear()
    lock, inside, peak = threading.Lock(), [0], [0]

    def counting(handler):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.15)
        with lock:
            inside[0] -= 1
        return Route(jpeg((0, 90, 0)), headers={"Content-Type": "image/jpeg"})
    urls = []
    for n in range(8):
        http_server.routes[f"/c{n}.jpg"] = counting
        urls.append(http_server.url(f"/c{n}.jpg"))
    batch = upload(client, csv_text([[url] for url in urls])).get_json()
    tasks.parse_batch(batch["id"])  # rows stored, two chunks of four

    # Two workers, each with four download threads: eight at once without the limit.
    workers = [threading.Thread(target=tasks.process_chunk, args=(batch["id"], n))
               for n in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert get(client, batch["id"])["images"]["processed"] == 8
    assert peak[0] == 2


def test_a_slot_left_by_a_killed_worker_expires(env):
    conn = queues.get_redis()
    conn.set(host_slots._slot_key("cdn.example", 0), "dead", px=200)  # never released
    started = time.monotonic()
    with host_slots.slot(conn, "cdn.example", 1, lease_s=5):
        waited = time.monotonic() - started
    assert 0.1 < waited < 2
    assert conn.get(host_slots._slot_key("cdn.example", 0)) is None  # released after use


def test_retry_after_seconds_reads_seconds_and_dates():
    now = datetime(2026, 12, 1, 23, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True),
                               now) == 90
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
