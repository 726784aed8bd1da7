"""Polite fetching: per-host download slots across workers, Retry-After waits that hold no
thread, retries of 5xx and connection failures, and 4xx failing at once."""
from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler

from infra import host_slots, queues, settings as settings_module, stores
from schemas.retry_after import retry_after_seconds
from tests.helpers import metric, set_env
from tests.servers import Route
from tests.test_control import csv_text, get, jpeg, serve_images, upload
from worker import tasks


def _images(client, batch_id: str) -> list[dict]:
    body = client.get(f"/api/v1/batches/{batch_id}/products?limit=100").get_json()
    return [image for product in body["items"] for image in product["images"]]


def _run_scheduled(work) -> None:
    """Wait until the first chunk job queued for later is due, move it to its queue (RQ's
    scheduler, once), and work."""
    registry = ScheduledJobRegistry(queue=queues.get_queue(queues.IMAGES))
    due = min(registry.get_scheduled_time(job_id) for job_id in registry.get_job_ids())
    time.sleep(max(0.0, due.timestamp() - time.time()) + 0.05)
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
        _run_scheduled(work)
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
    _run_scheduled(work)
    done = get(client, batch["id"])
    assert done["status"] == "failed", done  # its only image failed
    image = _images(client, batch["id"])[0]
    assert image["code"] == "http_status"
    assert re.fullmatch(r"HTTP 429 from 127\.0\.0\.1 2 times over [12] s", image["error"]), image
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
    assert host_slots.claim(conn, "cdn.example", 1, lease_s=5) == (0.0, None)  # no wait, None
    time.sleep(0.25)
    paused, slot = host_slots.claim(conn, "cdn.example", 1, lease_s=5)
    with slot:
        assert conn.get(host_slots._slot_key("cdn.example", 0)) is not None
    assert conn.get(host_slots._slot_key("cdn.example", 0)) is None  # released after use


def test_a_release_after_the_lease_expired_leaves_the_next_holders_slot(env):
    conn = queues.get_redis()
    _, late = host_slots.claim(conn, "cdn.example", 1, lease_s=0.1)
    time.sleep(0.2)  # the lease ran out: the slot is free for someone else
    _, next_holder = host_slots.claim(conn, "cdn.example", 1, lease_s=5)
    assert next_holder is not None
    late.release()
    assert host_slots.claim(conn, "cdn.example", 1, lease_s=5) == (0.0, None)  # still held
    next_holder.release()
    assert host_slots.claim(conn, "cdn.example", 1, lease_s=5)[1] is not None


def test_a_paused_or_slowed_host_gives_fewer_slots(env):
    conn, host = queues.get_redis(), "cdn.example"
    host_slots.pause_host(conn, host, 2)
    paused, slot = host_slots.claim(conn, host, 4, lease_s=5)
    assert slot is None and 1.5 < paused <= 2
    assert not conn.keys(host_slots._slot_key(host, "*"))  # nothing taken while paused
    conn.delete(host_slots._pause_key(host))
    first = host_slots.claim(conn, host, 4, lease_s=5)[1]
    assert first is not None and not first.slowed
    assert host_slots.slow_down(conn, host, 4, episode_s=1) == 2
    second = host_slots.claim(conn, host, 4, lease_s=5)[1]
    assert second is not None and second.slowed
    assert host_slots.claim(conn, host, 4, lease_s=5) == (0.0, None)  # two at once now


# One process of the test below: claims a slot of a host (limit 2) over and over, for 20 ms
# each time, and records when it held one.
_CLAIMER = """
import sys, time
import redis
from infra import host_slots
conn = redis.Redis.from_url(sys.argv[1])
start = time.monotonic() + 1.0
while time.monotonic() < start:  # all processes begin together
    time.sleep(0.001)
held = 0
while held < 15:
    _, slot = host_slots.claim(conn, "cdn.example", 2, lease_s=10)
    if slot is None:
        time.sleep(0.002)
        continue
    began = time.monotonic()
    time.sleep(0.02)
    ended = time.monotonic()
    slot.release()
    conn.rpush("held", f"{began!r} {ended!r}")
    held += 1
"""


def test_slots_bound_downloads_across_processes(env):
    import subprocess
    import sys

    from tests.topology import ROOT
    conn = queues.get_redis()
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, env.redis_url], cwd=ROOT)
             for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    spans = [tuple(map(float, item.split())) for item in conn.lrange("held", 0, -1)]
    assert len(spans) == 60
    events = sorted([(began, 1) for began, _ in spans] + [(ended, -1) for _, ended in spans],
                    key=lambda event: (event[0], event[1]))  # an end before a start at a tie
    inside = peak = 0
    for _, change in events:
        inside += change
        peak = max(peak, inside)
    assert peak == 2  # four processes wanted a slot all the time: never more than the limit


def test_a_throttling_host_is_halved_once_per_episode_and_recovers_with_successes(env):
    conn, host = queues.get_redis(), "cdn.example"
    assert host_slots.limit_for(conn, host, 8) == 8
    assert host_slots.slow_down(conn, host, 8, episode_s=1) == 4
    assert host_slots.slow_down(conn, host, 8, episode_s=1) is None  # the same burst of 429s
    assert host_slots.limit_for(conn, host, 8) == 4
    for _ in range(4):  # additive increase: +1 per `limit` successes
        host_slots.speed_up(conn, host, 8)
    assert host_slots.limit_for(conn, host, 8) == 5
    conn.delete(host_slots._slowed_key(host))  # a later episode
    assert host_slots.slow_down(conn, host, 8, episode_s=1) == 2
    conn.delete(host_slots._slowed_key(host))
    assert host_slots.slow_down(conn, host, 8, episode_s=1) == 1
    conn.delete(host_slots._slowed_key(host))
    assert host_slots.slow_down(conn, host, 8, episode_s=1) is None  # never below one
    assert host_slots.limit_for(conn, host, 8) == 1
    successes = 0
    while conn.exists(host_slots._limit_key(host)):
        host_slots.speed_up(conn, host, 8)
        successes += 1
    assert host_slots.limit_for(conn, host, 8) == 8
    assert successes == 1 + 2 + 3 + 4 + 5 + 6 + 7  # back to full speed, one step at a time
    assert conn.ttl(host_slots._limit_key(host)) == -2


class ThrottlingHost:
    """An image route that counts the requests it is answering at once and answers 429 with
    Retry-After to any that arrives while `allowed` are in already (after a third of the time
    an image takes: a real server's answer is not instant either). `log`: (arrival time,
    requests in at its arrival, status) per request."""

    def __init__(self, allowed: int, retry_after: str = "1", seconds: float = 0.3):
        self.allowed, self.retry_after, self.seconds = allowed, retry_after, seconds
        self.lock, self.inside, self.log = threading.Lock(), 0, []

    def __call__(self, handler):
        with self.lock:
            self.inside += 1
            arrived, inside = time.time(), self.inside
        try:
            if inside > self.allowed:
                time.sleep(self.seconds / 3)
                return Route(b"slow down", 429, headers={"Retry-After": self.retry_after})
            time.sleep(self.seconds)
            return Route(jpeg((0, 90, 0)), headers={"Content-Type": "image/jpeg"})
        finally:
            with self.lock:
                self.inside -= 1
                self.log.append((arrived, inside, 429 if inside > self.allowed else 200))


def test_a_host_that_throttles_gets_fewer_downloads_at_once_and_the_batch_completes(
        client, http_server, work, monkeypatch):
    set_env(monkeypatch, PER_HOST_CONCURRENCY=6, IMAGE_CONCURRENCY=6, CHUNK_SIZE=12)
    host = ThrottlingHost(allowed=2)
    urls = []
    for n in range(12):
        http_server.routes[f"/t{n}.jpg"] = host
        urls.append(http_server.url(f"/t{n}.jpg"))
    batch = upload(client, csv_text([[url] for url in urls])).get_json()
    conn = queues.get_redis()

    work()
    assert host_slots.limit_for(conn, "127.0.0.1", 6) == 3  # halved once for the whole burst
    for _ in range(30):
        if get(client, batch["id"])["status"] != "processing":
            break
        _run_scheduled(work)
    done = get(client, batch["id"])
    assert done["status"] == "completed", done
    assert done["images"]["processed"] == 12

    first_429 = min(at for at, _, status in host.log if status == 429)
    # Retry-After: 1, so the first wave is over half a second after its first 429.
    before = max(inside for at, inside, _ in host.log if at < first_429 + 0.5)
    after = max(inside for at, inside, _ in host.log if at > first_429 + 0.5)
    assert before >= 5, host.log
    assert after <= 3, host.log

    body = client.get("/metrics").get_data(as_text=True)
    throttled = sum(status == 429 for _, _, status in host.log)
    assert metric(body, "batchpress_host_throttled_total", status="429") == throttled
    assert metric(body, "batchpress_host_slowdowns_total") >= 2
    assert metric(body, "batchpress_image_deferrals_total", reason="throttled") == throttled
    assert metric(body, "batchpress_image_deferrals_total", reason="host_paused") >= 1


def test_a_busy_host_holds_no_thread_and_the_other_hosts_images_go_first(
        client, http_server, work, monkeypatch):
    set_env(monkeypatch, PER_HOST_CONCURRENCY=1, IMAGE_CONCURRENCY=2, CHUNK_SIZE=10)
    conn = queues.get_redis()
    # Another worker holds the only slot of `localhost` (the same server under another name).
    conn.set(host_slots._slot_key("localhost", 0), "another worker", px=60_000)
    for n in range(5):
        http_server.routes[f"/m{n}.jpg"] = Route(jpeg((n * 40, 0, 0)),
                                                 headers={"Content-Type": "image/jpeg"})
    busy = [f"http://localhost:{http_server.port}/m{n}.jpg" for n in (0, 1)]
    free = [http_server.url(f"/m{n}.jpg") for n in (2, 3, 4)]
    batch = upload(client, csv_text([[busy[0]], [free[0]], [busy[1]], [free[1]], [free[2]]]
                                    )).get_json()

    work()  # returns: the busy host's images are put back, no thread waits for its slot
    images = {im["input_url"]: im for im in _images(client, batch["id"])}
    assert [images[url]["status"] for url in free] == ["processed"] * 3
    assert [images[url]["status"] for url in busy] == ["pending"] * 2
    assert sorted(r["path"] for r in http_server.requests) == ["/m2.jpg", "/m3.jpg", "/m4.jpg"]
    assert [im.attempts for im in stores.products().pending_images(batch["id"], 0)] == [0, 0]
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_image_deferrals_total", reason="host_busy") == 2

    conn.delete(host_slots._slot_key("localhost", 0))  # the other worker is done with it
    _run_scheduled(work)
    assert get(client, batch["id"])["status"] == "completed"


def test_a_retry_backoff_holds_no_thread(client, http_server, work, monkeypatch):
    set_env(monkeypatch, IMAGE_CONCURRENCY=1, CHUNK_SIZE=10, DOWNLOAD_RETRY_BACKOFF_S=1)
    answers = []

    def flaky(handler):
        answers.append(time.time())
        if len(answers) == 1:
            return Route(b"bad gateway", 502)
        return Route(jpeg((200, 0, 0)), headers={"Content-Type": "image/jpeg"})
    http_server.routes["/flaky.jpg"] = flaky
    for n in range(3):
        http_server.routes[f"/o{n}.jpg"] = Route(jpeg((0, 0, 60 * n)),
                                                 headers={"Content-Type": "image/jpeg"})
    rows = [[http_server.url("/flaky.jpg")]] + [[http_server.url(f"/o{n}.jpg")] for n in range(3)]
    batch = upload(client, csv_text(rows)).get_json()
    work()
    assert get(client, batch["id"])["status"] == "completed"
    # One thread: the others were fetched while the flaky image waited out its backoff.
    assert [r["path"] for r in http_server.requests] == [
        "/flaky.jpg", "/o0.jpg", "/o1.jpg", "/o2.jpg", "/flaky.jpg"]
    assert answers[1] - answers[0] >= 1.0


def test_a_chunk_of_slow_images_goes_on_in_a_next_job_past_its_budget(client, http_server, work,
                                                                      monkeypatch):
    set_env(monkeypatch, IMAGE_CONCURRENCY=2, CHUNK_SIZE=6, CHUNK_BUDGET_S=0.6)
    sent: list[float] = []

    def slow(handler):  # a host taking 0.4 s an image
        sent.append(time.time())
        time.sleep(0.4)
        return Route(jpeg((90, 90, 0)), headers={"Content-Type": "image/jpeg"})
    for n in range(6):
        http_server.routes[f"/slow{n}.jpg"] = slow
    batch = upload(client, csv_text([[http_server.url(f"/slow{n}.jpg")] for n in range(6)]))
    batch = batch.get_json()
    work()  # the first job: two images at a time, none started after 0.6 s
    first = get(client, batch["id"])
    # Started at 0 and 0.4 s (fewer on a machine slow enough to pass 0.6 s meanwhile).
    assert first["status"] == "processing" and 2 <= first["images"]["processed"] <= 4, first
    for _ in range(5):
        if get(client, batch["id"])["status"] != "processing":
            break
        _run_scheduled(work)  # queued again at once, for the images not started
    done = get(client, batch["id"])
    assert done["status"] == "completed" and done["images"]["processed"] == 6, done
    assert len(sent) == 6  # each image downloaded once: those put back had not started
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_image_deferrals_total", reason="chunk_budget") >= \
        6 - first["images"]["processed"]


def test_retry_after_seconds_reads_seconds_and_dates():
    now = datetime(2026, 12, 1, 23, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True),
                               now) == 90
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
