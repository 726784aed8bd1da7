"""Jobs are idempotent, pages are stable, and a failing store answers 503 leaving nothing behind."""
from __future__ import annotations

import pymongo
import pytest

from infra import db, jobs, queues, storage, stores
from infra.settings import get_settings
from tests.servers import Route, free_port
from tests.test_flow import jpeg, upload
from tests.test_upload import HEADER, assert_problem, post_raw
from worker import tasks


def test_chunk_and_parse_jobs_run_twice_change_nothing(client, http_server, work, s3, env):
    for name in "abcde":
        http_server.routes[f"/{name}.jpg"] = Route(jpeg(20, 10))
    urls = [http_server.url(f"/{n}.jpg") for n in "abcde"]
    rows = "".join(f'{i},P{i},"{urls[i % 5]},{urls[(i + 1) % 5]}"\n' for i in range(1, 7))
    batch_id = upload(client, HEADER + rows).get_json()["id"]

    tasks.parse_batch(batch_id)            # as if the parse job ran...
    tasks.parse_batch(batch_id)            # ...and was retried
    tasks.process_chunk(batch_id, 0)       # a chunk job that runs...
    tasks.process_chunk(batch_id, 0)       # ...twice before the queue gets to it
    work()                                 # the queued jobs (parse and chunks) run once more
    tasks.process_chunk(batch_id, 1)       # and a late duplicate after the finish

    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed"
    assert batch["rows"] == {"total": 6, "valid": 6, "invalid": 0, "done_reading": True}
    assert batch["images"] == {"total": 12, "processed": 12, "failed": 0, "reused": 0}
    assert db.products().count_documents({"batch_id": batch_id}) == 6
    assert db.images().count_documents({"batch_id": batch_id}) == 5
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=env.s3_bucket,
                                                  Prefix=f"outputs/{batch_id}/")["Contents"]]
    assert len(keys) == 5
    fetched = [r for r in http_server.requests if r["path"].endswith(".jpg")]
    assert len(fetched) == 5  # each unique URL fetched once, duplicates and re-runs included
    assert db.get_db()["batches"].find_one({"_id": batch_id})["finish_seq"] == 1


def test_batches_list_is_newest_first_with_a_cursor_and_filters(client, work):
    ids = [post_raw(client, (HEADER + f"{i},P,http://h/{i}.jpg\n").encode()).get_json()["id"]
           for i in range(5)]
    page1 = client.get("/api/v1/batches?limit=2").get_json()
    page2 = client.get(f"/api/v1/batches?limit=2&cursor={page1['next_cursor']}").get_json()
    page3 = client.get(f"/api/v1/batches?limit=2&cursor={page2['next_cursor']}").get_json()
    seen = [b["id"] for b in page1["items"] + page2["items"] + page3["items"]]
    assert seen == list(reversed(ids)) and page3["next_cursor"] is None
    assert client.get("/api/v1/batches?status=queued").get_json()["items"].__len__() == 5
    assert client.get("/api/v1/batches?status=completed").get_json()["items"] == []
    assert_problem(client.get("/api/v1/batches?limit=501"), 400, "limit")
    assert_problem(client.get("/api/v1/batches?cursor=garbage"), 400, "cursor")
    assert_problem(client.get("/api/v1/batches?status=done"), 400, "status")
    assert_problem(client.get("/api/v1/batches?created_after=yesterday"), 400, "created_after")


@pytest.mark.parametrize("limit", ["%C2%B2", "%D9%A1", "%EF%BC%95", "+5", "5%20", "00001", "0"])
def test_limit_takes_ascii_digits_only(client, limit):
    batch_id = post_raw(client, (HEADER + "1,P,http://h/1.jpg\n").encode()).get_json()["id"]
    for path in ("/api/v1/batches", f"/api/v1/batches/{batch_id}/products"):
        assert_problem(client.get(f"{path}?limit={limit}"), 400, "limit")


def _cursor(value) -> str:
    import base64
    import json
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    "eyJsIjoxZTQwMH0",                    # {"l":1e400}: a float overflowing int()
    _cursor({"l": 2**31}), _cursor({"l": -1}), _cursor({"l": 1.5}), _cursor({"l": "3"}),
    _cursor({"l": True}), _cursor({"l": None}), _cursor({"x": 1}), _cursor([1]),
    _cursor(b'{"l":NaN}'), _cursor(b'{"l":Infinity}'),
])
def test_crafted_products_cursor_is_400(client, cursor):
    batch_id = post_raw(client, (HEADER + "1,P,http://h/1.jpg\n").encode()).get_json()["id"]
    assert_problem(client.get(f"/api/v1/batches/{batch_id}/products?cursor={cursor}"), 400,
                   "cursor")


@pytest.mark.parametrize("cursor", [
    _cursor({"t": "2026-11-23T10:00:00", "i": "bat_x"}),         # no time zone
    _cursor({"t": "2026-11-23T10:00:00+00:00", "i": 1e308}),
    _cursor({"t": "2026-11-23T10:00:00+00:00", "i": {"$gt": ""}}),
    _cursor({"t": "2026-11-23T10:00:00+00:00", "i": "x" * 1000}),
    _cursor({"t": 1e400, "i": "bat_x"}), _cursor({"t": ["x"], "i": "bat_x"}),
    _cursor({"t": "2026-11-23T10:00:00+00:00"}), _cursor(b'{"t":NaN,"i":"x"}'),
    _cursor({"t": "9999-12-31T23:59:59-14:00", "i": "bat_x"}),  # past year 9999 in UTC
    _cursor({"t": "0001-01-01T00:00:00+14:00", "i": "bat_x"}),  # before year 1 in UTC
])
def test_crafted_batches_cursor_is_400(client, cursor):
    post_raw(client, (HEADER + "1,P,http://h/1.jpg\n").encode())
    assert_problem(client.get(f"/api/v1/batches?cursor={cursor}"), 400, "cursor")


@pytest.mark.parametrize("query", ["created_after=9999-12-31T23:59:59-14:00",
                                   "created_before=0001-01-01T00:00:00%2B14:00"])
def test_times_outside_utcs_years_are_400(client, query):
    response = client.get(f"/api/v1/batches?{query}")
    assert_problem(response, 400, query.partition("=")[0])
    assert "outside the years 1 to 9999" in response.get_json()["detail"]


def test_last_event_id_takes_ascii_digits_only():
    from api.control import parse_key
    assert parse_key("1.2.3") == (1, 2, 3)
    for raw in ("\u00b2.0.0", "\u0661.0.0", "1.2.\uff13", "+1.0.0", "1.0"):
        assert parse_key(raw) is None


def test_products_are_paginated_in_line_order(client, work):
    rows = "".join(f"{i},P{i},http://h/{i}.jpg\n" for i in range(1, 8))
    batch_id = post_raw(client, (HEADER + rows).encode()).get_json()["id"]
    work()
    serials, cursor = [], None
    while True:
        page = client.get(f"/api/v1/batches/{batch_id}/products?limit=3"
                          + (f"&cursor={cursor}" if cursor else "")).get_json()
        serials += [p["serial_no"] for p in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert serials == list(range(1, 8))


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("service", ["Redis", "S3", "MongoDB"])
def test_a_store_that_is_down_answers_503_and_leaves_no_batch(client, env, s3, monkeypatch, service):
    body = (HEADER + "1,P,http://h/a.jpg\n").encode()
    mongo = db.get_client()
    if service == "Redis":
        import redis
        queues.use_connection(redis.Redis.from_url(_dead_url().replace("http", "redis"),
                                                   socket_connect_timeout=0.5))
    elif service == "S3":
        storage.use_endpoint(_dead_url())
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    else:
        db.use_client(pymongo.MongoClient(_dead_url().replace("http", "mongodb"),
                                          serverSelectionTimeoutMS=300))
    try:
        response = post_raw(client, body)
    finally:
        queues.use_connection(None)
        storage.use_endpoint(None)
        db.use_client(mongo)
    problem = assert_problem(response, 503, service)
    assert problem["service"] == service and response.headers["Retry-After"]
    assert s3.list_objects_v2(Bucket=env.s3_bucket).get("KeyCount", 0) == 0
    if service != "MongoDB":
        assert db.batches().count_documents({}) == 0


def _webhook_bodies(http_server) -> list[dict]:
    import json
    return [json.loads(r["body"]) for r in http_server.requests
            if r["method"] == "POST" and r["path"] == "/hook"]


def test_a_parse_job_that_crashes_on_every_retry_fails_its_batch_once(
        client, http_server, work, monkeypatch):
    import worker.parse
    from tests.servers import Route
    http_server.routes["/hook"] = Route(b"", 204)
    monkeypatch.setattr(get_settings(), "job_retry_schedule", "0,0,0")  # at once, same burst
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("boom: a secret internal detail")
    monkeypatch.setattr(worker.parse, "_row_record", crash)
    batch_id = post_raw(client, (HEADER + "1,P,http://h/a.jpg\n").encode(),
                        query="?webhook_url=" + http_server.url("/hook")).get_json()["id"]
    work()
    assert len(calls) == 4  # the first run and 3 retries: only the last failure ends the batch
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "failed" and batch["finished_at"]
    assert batch["error"].startswith("the file could not be processed")
    assert "boom" not in batch["error"] and "Traceback" not in batch["error"]
    [event] = _webhook_bodies(http_server)
    assert event["type"] == "batch.failed" and event["data"]["error"] == batch["error"]
    assert db.batches().find_one({"_id": batch_id})["finish_seq"] == 1


def test_a_parse_job_whose_csv_is_gone_fails_its_batch(client, work, s3, env, monkeypatch):
    monkeypatch.setattr(get_settings(), "job_retry_schedule", "0")
    batch_id = post_raw(client, (HEADER + "1,P,http://h/a.jpg\n").encode()).get_json()["id"]
    s3.delete_object(Bucket=env.s3_bucket, Key=db.batches().find_one({"_id": batch_id})["csv_key"])
    work()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "failed"
    assert batch["error"].startswith("the file could not be processed")
    assert "NoSuchKey" not in batch["error"]


def test_a_parse_job_with_retries_left_leaves_its_batch_processing(client, work, monkeypatch):
    import worker.parse
    from rq.registry import ScheduledJobRegistry

    def crash(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(worker.parse, "_row_record", crash)
    batch_id = post_raw(client, (HEADER + "1,P,http://h/a.jpg\n").encode()).get_json()["id"]
    work()  # fails once; the retry waits 10 s in the scheduled registry
    assert client.get(f"/api/v1/batches/{batch_id}").get_json()["status"] == "processing"
    scheduled = ScheduledJobRegistry(queues.BATCHES, connection=queues.get_redis())
    assert jobs.parse_job_id(batch_id) in scheduled.get_job_ids()


class WorkerDied(BaseException):
    """Stands in for the worker process dying mid-image (OOM kill, decoder segfault): nothing
    after it runs, so the image stays pending."""


def test_a_poison_image_fails_after_max_attempts_and_counts_once(client, http_server, env,
                                                                  monkeypatch):
    from tests.servers import Route
    from tests.test_flow import jpeg
    from worker import chunks, sweeper
    for name in ("poison", "a", "b"):
        http_server.routes[f"/{name}.jpg"] = Route(jpeg(20, 10))
    poison, a, b = (http_server.url(f"/{n}.jpg") for n in ("poison", "a", "b"))
    text = HEADER + f'1,P1,"{poison},{a}"\n2,P2,"{b},{poison}"\n'
    batch_id = post_raw(client, text.encode()).get_json()["id"]
    tasks.parse_batch(batch_id)  # one chunk of three images; its job is left in the queue
    real_fetch, tries = chunks.fetch, []

    def fetch(session, url, settings, **kwargs):
        if url == poison:
            tries.append(url)
            raise WorkerDied()
        return real_fetch(session, url, settings, **kwargs)
    monkeypatch.setattr(chunks, "fetch", fetch)

    for _ in range(env.max_image_attempts):  # the chunk job dies, and is re-run, 3 times
        with pytest.raises(WorkerDied):
            tasks.process_chunk(batch_id, 0)
    assert client.get(f"/api/v1/batches/{batch_id}").get_json()["status"] == "processing"
    # Gives up without fetching it. The run may also finish an image the first death left
    # unstarted: every image the dying runs had not finished is suspect and goes one at a time.
    assert tasks.process_chunk(batch_id, 0)["images"] >= 1
    assert len(tries) == env.max_image_attempts

    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed_with_errors"
    assert batch["images"] == {"total": 4, "processed": 2, "failed": 2, "reused": 0}  # poison: 2 slots
    image = db.images().find_one({"batch_id": batch_id, "url": poison})
    assert image["status"] == "failed" and image["attempts"] == env.max_image_attempts + 1
    assert image["error"] == ("gave up after 3 attempts: the worker died while processing it")
    errors = client.get(f"/api/v1/batches/{batch_id}/errors.csv").get_data(as_text=True)
    assert errors.count("gave up after 3 attempts") == 2
    assert errors.count(",worker_died\r\n") == 2
    tasks.process_chunk(batch_id, 0)  # a late duplicate, and a sweep, count nothing twice
    sweeper.recover(stores.batches().get(batch_id, any_owner=True))
    assert client.get(f"/api/v1/batches/{batch_id}").get_json()["images"]["failed"] == 2

    assert client.post(f"/api/v1/batches/{batch_id}/retry").status_code == 202
    assert db.images().find_one({"batch_id": batch_id, "url": poison})["attempts"] == 0


def _three_images_parsed(client, http_server) -> tuple[str, list[str]]:
    """A parsed batch of one chunk of three images, its jobs taken off the queues (the tests
    run them by hand, as the worker that dies would have)."""
    from rq.job import Job
    for name in "abc":
        http_server.routes[f"/{name}.jpg"] = Route(jpeg(20, 10))
    urls = [http_server.url(f"/{n}.jpg") for n in "abc"]
    text = HEADER + f'1,P1,"{urls[0]},{urls[1]}"\n2,P2,"{urls[2]},{urls[0]}"\n'
    batch_id = post_raw(client, text.encode()).get_json()["id"]
    tasks.parse_batch(batch_id)
    for job_id in (jobs.parse_job_id(batch_id), jobs.chunk_job_id(batch_id, 0)):
        Job.fetch(job_id, connection=queues.get_redis()).delete()
    return batch_id, urls


def _fetches(http_server) -> int:
    return len([r for r in http_server.requests if r["path"].endswith(".jpg")])


def test_a_worker_killed_between_claiming_a_chunk_and_its_images_loses_and_doubles_nothing(
        client, http_server, env):
    from worker import chunks
    batch_id, _ = _three_images_parsed(client, http_server)
    images = stores.products().pending_images(batch_id, 0)
    chunks._Run(batch_id, images)  # the run claims the chunk's attempts... and its worker dies
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "processing" and batch["images"]["processed"] == 0

    assert tasks.process_chunk(batch_id, 0) == {"images": 3}  # the suspects, one at a time
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed"
    assert batch["images"] == {"total": 4, "processed": 4, "failed": 0, "reused": 0}
    assert _fetches(http_server) == 3
    # One death blamed on every image of the run, and one attempt each of their own.
    assert [d["attempts"] for d in db.images().find({"batch_id": batch_id})] == [2, 2, 2]


def test_a_worker_killed_before_adding_its_images_results_is_recounted_by_the_next_run(
        client, http_server, env, monkeypatch):
    from worker import chunks, sweeper
    batch_id, _ = _three_images_parsed(client, http_server)
    store = stores.batches()

    def die(*args, **kwargs):
        raise WorkerDied()
    # The worker dies as it would add its run's results: every image is marked, none counted.
    monkeypatch.setattr(type(store), "add_image_results", die)
    with pytest.raises(WorkerDied):
        chunks.process_chunk(batch_id, 0, env)
    monkeypatch.undo()
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "processing" and batch["images"]["processed"] == 0
    assert not stores.products().any_pending(batch_id)

    # Its job run again (RQ's retry of an abandoned job) finds nothing to do and recounts,
    # rather than leaving the batch to the stall sweeper.
    assert tasks.process_chunk(batch_id, 0) == {"images": 0}
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed"
    assert batch["images"] == {"total": 4, "processed": 4, "failed": 0, "reused": 0}
    assert _fetches(http_server) == 3
    finished = db.batches().find_one({"_id": batch_id})
    tasks.process_chunk(batch_id, 0)  # a late duplicate, and a sweep, count nothing twice
    sweeper.recover(stores.batches().get(batch_id, any_owner=True))
    again = db.batches().find_one({"_id": batch_id})
    assert (again["images_processed"], again["finish_seq"]) == (4, finished["finish_seq"])


def test_an_image_that_backs_off_and_then_kills_the_worker_is_a_suspect_next_run(
        client, http_server, env, monkeypatch):
    from schemas.failures import FailureCode
    from worker import chunks
    from worker.download import DownloadError
    batch_id, urls = _three_images_parsed(client, http_server)
    real_fetch, tries = chunks.fetch, []

    def fetch(session, url, settings, **kwargs):
        if url == urls[1]:
            tries.append(url)
            if len(tries) == 1:  # a 5xx: its attempt is given back, retried in the same run
                raise DownloadError("HTTP 502", FailureCode.HTTP_STATUS, status=502)
            raise WorkerDied()  # the retry takes the worker down
        return real_fetch(session, url, settings, **kwargs)
    monkeypatch.setattr(chunks, "fetch", fetch)
    with pytest.raises(WorkerDied):
        chunks.process_chunk(batch_id, 0, env)
    monkeypatch.undo()
    # The retry counted its own attempt, so the death is on it: it goes next as a suspect.
    doc = db.images().find_one({"batch_id": batch_id, "url": urls[1]})
    assert (doc["status"], doc["attempts"]) == ("pending", 1)
    [suspect] = stores.products().pending_images(batch_id, 0)
    assert suspect.url == urls[1] and suspect.attempts == 1

    assert tasks.process_chunk(batch_id, 0) == {"images": 1}
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "completed"
    assert batch["images"] == {"total": 4, "processed": 4, "failed": 0, "reused": 0}


def test_a_chunk_job_does_not_recount_under_a_live_job_of_its_batch(client, http_server, env,
                                                                     monkeypatch):
    from worker import chunks
    batch_id, _ = _three_images_parsed(client, http_server)

    def die(*args, **kwargs):
        raise WorkerDied()
    monkeypatch.setattr(type(stores.batches()), "add_image_results", die)
    with pytest.raises(WorkerDied):
        chunks.process_chunk(batch_id, 0, env)
    monkeypatch.undo()
    # Another job of the batch waits in the queue: it may hold results not added yet.
    jobs.enqueue_chunks(batch_id, [0])
    assert tasks.process_chunk(batch_id, 0) == {"images": 0}
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "processing" and batch["images"]["processed"] == 0


def test_an_upload_over_a_mebibyte_is_stored_whole(client, s3, env):
    # A request body read in short pieces must not be cut at the first short read.
    body = (HEADER + "".join(f"{i},Name {i} {'x' * 60},http://h/{i}.jpg\n"
                             for i in range(1, 40000))).encode()
    assert len(body) > 3 * 1024 * 1024
    batch_id = post_raw(client, body).get_json()["id"]
    stored = db.batches().find_one({"_id": batch_id})
    assert stored["csv_bytes"] == len(body)
    obj = s3.get_object(Bucket=env.s3_bucket, Key=stored["csv_key"])
    assert obj["ContentLength"] == len(body)


def test_an_upload_of_several_parts_is_stored_whole_and_in_order(client, s3, env):
    # Over the multipart threshold: every part, read ahead or not, must arrive, in order.
    body = (HEADER + "".join(f"{i},Name {i} {'x' * 60},http://h/{i}.jpg\n"
                             for i in range(1, 250000))).encode()
    assert len(body) > 3 * storage.PART_BYTES
    batch_id = post_raw(client, body).get_json()["id"]
    stored = db.batches().find_one({"_id": batch_id})
    obj = s3.get_object(Bucket=env.s3_bucket, Key=stored["csv_key"])
    assert obj["Body"].read() == body


def test_the_parse_failure_callback_leaves_a_parsed_batch_alone(client, work):
    """RQ calls it for jobs it takes for abandoned too, even ones that succeeded (rq#2424)."""
    import traceback
    from rq.exceptions import AbandonedJobError
    from rq.job import Job
    parsed = post_raw(client, (HEADER + "1,P,http://h/a.jpg\n").encode()).get_json()["id"]
    lost = post_raw(client, (HEADER + "1,P,http://h/b.jpg\n").encode()).get_json()["id"]
    tasks.parse_batch(parsed)
    db.batches().update_one({"_id": lost}, {"$set": {"status": "processing"}})
    for batch_id in (parsed, lost):
        job = Job.fetch(jobs.parse_job_id(batch_id), connection=queues.get_redis())
        job.retries_left = 0
        tasks.parse_failed(job, queues.get_redis(), AbandonedJobError, AbandonedJobError(),
                           traceback.extract_stack())
    assert db.batches().find_one({"_id": parsed})["status"] == "processing"
    lost_batch = db.batches().find_one({"_id": lost})
    assert lost_batch["status"] == "failed" and lost_batch["error"] == tasks.PARSE_CRASHED


@pytest.mark.parametrize("seconds", [5.0, None])
def test_a_chunk_queued_again_under_an_id_kept_from_its_last_run_does_not_expire(env, seconds):
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry
    conn = queues.get_redis()
    first, _ = jobs.later_job_ids("bat_x", 3)
    # Its run of a while ago, finished and kept for result_ttl: the key expires soon.
    jobs.enqueue_chunk_later("bat_x", 3, seconds)
    conn.expire(Job.key_for(first), 2)
    jobs.enqueue_chunk_later("bat_x", 3, seconds)  # from the chunk's first job: the same id
    assert conn.ttl(Job.key_for(first)) == -1  # waits for as long as it needs, then runs
    queue = queues.get_queue(queues.IMAGES)
    if seconds is None:
        assert first in queue.job_ids
    else:
        assert first in ScheduledJobRegistry(queue=queue).get_job_ids()
