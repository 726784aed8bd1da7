"""`make run` on real services (REDIS_URL, MONGO_URL, S3_ENDPOINT_URL set): one process that
moves RQ's scheduled jobs itself and stops, all of it, on a SIGTERM sent to its PID alone."""
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

from redis import Redis
from rq import Queue
from rq.job import JobStatus

from tests.live_service import start_service


def test_make_run_on_real_services_runs_scheduled_jobs_and_stops_on_sigterm(
        tmp_path, redis_server, s3_server, mongo_wire):
    if not mongo_wire.running:
        mongo_wire.start()
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/8"
    running = start_service(tmp_path / "service.log", REDIS_URL=redis_url,
                            MONGO_URL=mongo_wire.uri, S3_ENDPOINT_URL=s3_server,
                            S3_BUCKET="bp-make-run", MONGO_DB="bp_make_run",
                            AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                            AWS_DEFAULT_REGION="us-east-1")
    service = next(running)
    try:
        # A job due in a second (as a webhook retry is) reaches its queue and runs: the
        # service's own scheduler thread holds RQ's scheduler lock and moves it.
        job = Queue("webhooks", connection=Redis.from_url(redis_url)).enqueue_in(
            timedelta(seconds=1), "os.getpid")
        deadline = time.monotonic() + 20
        while job.get_status(refresh=True) != JobStatus.FINISHED:
            assert time.monotonic() < deadline, job.get_status()
            time.sleep(0.1)
        assert job.return_value() == service.process.pid  # run inside the service's process

        os.kill(service.process.pid, signal.SIGTERM)  # the PID only, not its process group
        assert service.process.wait(timeout=20) == 0, service.log.read_text()
    finally:
        running.close()
