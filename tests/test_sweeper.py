"""The stall sweeper (worker/sweeper.py): lost and killed jobs recovered, forgotten batches
finished, hopeless ones given up."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from infra import db, jobs, queues, stores
from infra.settings import get_settings
from tests.batch_helpers import (
    csv_text, get, job_status, requests_to, serve_images, upload, wait_for)
from worker import tasks


def parse_only() -> None:
    """Run the batches queue only: the parse job, not the chunk jobs it enqueues."""
    SimpleWorker([queues.get_queue(queues.BATCHES)], connection=queues.get_redis()).work(
        burst=True, logging_level="WARNING")


def later(env) -> datetime:
    """A moment past the stall timeout, so every untouched batch counts as stalled."""
    return datetime.now(timezone.utc) + timedelta(seconds=env.stall_timeout_s + 1)


def test_sweeper_requeues_a_parse_job_lost_from_redis(client, http_server, work, env):
    from worker import sweeper
    urls = serve_images(http_server, 4)
    batch = upload(client, csv_text([urls[:2], urls[2:]])).get_json()
    assert sweeper.sweep(later(env)) == []  # stalled, but its parse job is still queued
    queues.get_redis().flushdb()  # Redis restarted without persistence
    assert sweeper.sweep() == []  # not stalled yet
    recovered = sweeper.sweep(later(env))
    assert recovered == [{"batch_id": batch["id"], "action": "parse"}]
    assert sweeper.sweep(later(env) - timedelta(seconds=2)) == []  # its clock restarted
    work()
    after = get(client, batch["id"])
    assert after["status"] == "completed"
    assert after["images"] == {"total": 4, "processed": 4, "failed": 0, "reused": 0}


def test_sweeper_finishes_a_chunk_job_killed_midway(client, http_server, work, env):
    from worker import chunks, sweeper
    urls = serve_images(http_server, 5)  # chunks of 3: chunk 0 has 3 images, chunk 1 has 2
    batch = upload(client, csv_text([urls[:3], urls[3:]])).get_json()
    batch_id = batch["id"]
    parse_only()
    assert get(client, batch_id)["status"] == "processing"
    # A worker ran chunk 0 for one image, then died: its job is "started" with a dead heartbeat.
    conn = queues.get_redis()
    image_queue = queues.get_queue(queues.IMAGES)
    chunk0 = Job.fetch(jobs.chunk_job_id(batch_id, 0), connection=conn)
    image_queue.remove(chunk0)
    chunk0.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queues.IMAGES, connection=conn)
    conn.zadd(registry.key, {f"{chunk0.id}:dead-execution": time.time() - 5})
    [first] = [im for im in stores.products().pending_images(batch_id, 0) if im.url == urls[0]]
    watch = chunks._CancelWatch(batch_id)
    from worker.download import make_session
    session = make_session(env, pool_size=1)
    assert chunks._one(first, batch_id, session, env, watch) == 1
    session.close()
    # Chunk 1's job is gone altogether (evicted, or Redis lost it).
    Job.fetch(jobs.chunk_job_id(batch_id, 1), connection=conn).delete()
    assert image_queue.count == 0

    recovered = sweeper.sweep(later(env))
    assert recovered == [{"batch_id": batch_id, "action": "chunks", "chunks": [0, 1]}]
    work()
    after = get(client, batch_id)
    assert after["status"] == "completed"
    assert after["images"] == {"total": 5, "processed": 5, "failed": 0, "reused": 0}
    assert requests_to(http_server, "/img0.jpg") == 1  # done before the kill, not redone
    assert all(requests_to(http_server, f"/img{i}.jpg") == 1 for i in range(5))


def test_sweeper_leaves_running_work_alone_and_finishes_forgotten_batches(
        client, http_server, work, env):
    from worker import chunks, sweeper
    urls = serve_images(http_server, 2)
    batch_id = upload(client, csv_text([urls])).get_json()["id"]
    parse_only()
    # A started job whose worker heartbeat is fresh is alive: the sweeper leaves it alone.
    conn = queues.get_redis()
    job = Job.fetch(jobs.chunk_job_id(batch_id, 0), connection=conn)
    queues.get_queue(queues.IMAGES).remove(job)
    job.set_status(JobStatus.STARTED)
    registry = StartedJobRegistry(queues.IMAGES, connection=conn)
    conn.zadd(registry.key, {f"{job.id}:live-execution": time.time() + 60})
    assert sweeper.sweep(later(env)) == []
    # The worker did every image but died before finishing the batch, and a counter update
    # was lost too: the sweeper re-derives the counts and finishes the batch (once).
    chunks.process_chunk(batch_id, 0, env)
    db.batches().update_one({"_id": batch_id}, {"$set": {"images_processed": 1}})
    conn.delete(registry.key)
    job.delete()
    recovered = sweeper.sweep(later(env))
    assert recovered == [{"batch_id": batch_id, "action": "finish", "status": "completed"}]
    after = get(client, batch_id)
    assert after["status"] == "completed" and after["images"]["processed"] == 2
    assert sweeper.sweep(later(env)) == []  # finished batches are not swept


def test_sweeper_runs_from_rq_cron(client, http_server, work, env):
    from rq.cron import CronScheduler
    urls = serve_images(http_server, 1)
    batch_id = upload(client, csv_text([urls])).get_json()["id"]
    queues.get_redis().flushdb()
    db.batches().update_one({"_id": batch_id},
                            {"$set": {"updated_at": datetime.now(timezone.utc)
                                      - timedelta(seconds=env.stall_timeout_s + 5)}})
    cron = CronScheduler(connection=queues.get_redis())
    cron.load_config_from_file("worker.cron_config")
    jobs = {job.func_name: job for job in cron.get_jobs()}
    assert set(jobs) == {"worker.sweeper.run_sweep", "worker.webhook_delivery.recover_overdue"}
    assert jobs["worker.sweeper.run_sweep"].interval == 60
    cron.enqueue_jobs()
    assert queues.get_queue(queues.BATCHES).count == 1
    assert queues.get_queue(queues.WEBHOOKS).count == 1
    work()  # runs the sweep, which enqueues the lost parse job, which the same burst runs
    assert get(client, batch_id)["status"] == "completed"


def test_sweeper_thread_for_a_single_process(client, http_server, env):
    from worker import sweeper
    batch_id = upload(client, csv_text([serve_images(http_server, 1)])).get_json()["id"]
    queues.get_redis().flushdb()
    db.batches().update_one({"_id": batch_id},
                            {"$set": {"updated_at": datetime.now(timezone.utc)
                                      - timedelta(seconds=env.stall_timeout_s + 5)}})
    stop = threading.Event()
    thread = sweeper.start_thread(stop, interval=0.05)
    try:
        wait_for(lambda: job_status(jobs.parse_job_id(batch_id)) == JobStatus.QUEUED, timeout=5)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert db.batches().find_one({"_id": batch_id})["sweeps"] == 1


def test_sweeper_gives_up_on_a_parse_that_keeps_dying(client, http_server, env, monkeypatch):
    from worker import sweeper
    monkeypatch.setenv("MAX_STALL_RECOVERIES", "2")
    get_settings.cache_clear()
    batch_id = upload(client, csv_text([serve_images(http_server, 1)])).get_json()["id"]
    for _ in range(2):  # its parse job is lost (the worker killed mid-parse), twice
        queues.get_redis().flushdb()
        assert [r["action"] for r in sweeper.sweep(later(env))] == ["parse"]
    queues.get_redis().flushdb()
    assert sweeper.sweep(later(env)) == [
        {"batch_id": batch_id, "action": "gave_up", "status": "failed"}]
    batch = get(client, batch_id)
    assert batch["status"] == "failed"
    assert batch["error"] == ("the file could not be processed: gave up after 2 recoveries: its "
                              "jobs kept stalling (workers lost or killed while processing it)")
    assert sweeper.sweep(later(env)) == []


def test_sweeper_gives_up_only_after_recoveries_in_a_row_without_progress(
        client, http_server, env, monkeypatch):
    from worker import sweeper
    monkeypatch.setenv("MAX_STALL_RECOVERIES", "2")
    get_settings.cache_clear()
    urls = serve_images(http_server, 4)  # CHUNK_SIZE 3: chunks 0 and 1
    batch_id = upload(client, csv_text([urls])).get_json()["id"]
    parse_only()

    def lose_jobs_and_sweep():
        queues.get_redis().flushdb()
        return sweeper.sweep(later(env))

    assert [r["action"] for r in lose_jobs_and_sweep()] == ["chunks"]           # 1st in a row
    assert [r["action"] for r in lose_jobs_and_sweep()] == ["chunks"]           # 2nd
    tasks.process_chunk(batch_id, 1)  # progress: the count starts again
    assert [r.get("chunks") for r in lose_jobs_and_sweep()] == [[0]]            # 1st
    assert [r.get("chunks") for r in lose_jobs_and_sweep()] == [[0]]            # 2nd
    assert lose_jobs_and_sweep() == [
        {"batch_id": batch_id, "action": "gave_up", "status": "completed_with_errors"}]
    batch = get(client, batch_id)
    assert batch["images"] == {"total": 4, "processed": 1, "failed": 3, "reused": 0}
    errors = client.get(f"/api/v1/batches/{batch_id}/errors.csv").get_data(as_text=True)
    assert errors.count("gave up after 2 recoveries") == 3
    assert errors.count(",stalled\r\n") == 3
