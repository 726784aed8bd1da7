"""/metrics (infra/metrics.py): the pipeline, queues and webhook attempts counted."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import CSV, ROOT, metric
from tests.servers import Route
from tests.test_flow import jpeg, upload


def test_metrics_count_the_pipeline(client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(40, 30), headers={"Content-Type": "image/jpeg"})
    a, missing = http_server.url("/a.jpg"), http_server.url("/no.jpg")
    text = ("S. No.,Product Name,Input Image Urls\n"
            f'1,Shirt,"{a}"\n2,Mug,"{missing}"\n3,,{a}\n')
    assert upload(client, text).status_code == 202
    work()
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    body = response.get_data(as_text=True)
    assert metric(body, "batchpress_batches_finished_total", status="completed_with_errors") == 1
    assert metric(body, "batchpress_rows_total", result="accepted") == 2
    assert metric(body, "batchpress_rows_total", result="rejected") == 1
    assert metric(body, "batchpress_images_total", result="processed") == 1
    assert metric(body, "batchpress_images_total", result="failed", reason="http_status") == 1
    assert metric(body, "batchpress_image_bytes_total", direction="in") >= len(jpeg(40, 30))
    assert metric(body, "batchpress_image_bytes_total", direction="out") > 0
    assert metric(body, "batchpress_download_seconds_count") == 2
    assert metric(body, "batchpress_download_seconds_bucket", le="+Inf") == 2
    assert metric(body, "batchpress_encode_seconds_count") == 1
    assert metric(body, "batchpress_queue_jobs", queue="images", state="queued") == 0
    assert metric(body, "batchpress_http_requests_total", method="POST",
                  endpoint="/api/v1/batches", status="202") >= 1


def test_the_workers_cpu_is_counted_per_step(client, http_server, work):
    http_server.routes["/big.jpg"] = Route(jpeg(800, 600), headers={"Content-Type": "image/jpeg"})
    url = http_server.url("/big.jpg")
    assert upload(client, f"S. No.,Product Name,Input Image Urls\n1,Shirt,{url}\n").status_code \
        == 202
    work()
    body = client.get("/metrics").get_data(as_text=True)
    steps = {step: metric(body, "batchpress_worker_cpu_seconds_total", step=step)
             for step in ("download", "hash", "encode", "store", "record", "image", "chunk",
                          "parse")}
    assert all(seconds > 0 for seconds in steps.values()), steps
    # An image's steps are parts of its whole.
    assert steps["image"] >= sum(steps[s] for s in ("download", "hash", "encode", "store",
                                                    "record"))


def test_metrics_show_queue_depths(client):
    upload(client, CSV)
    upload(client, CSV)
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_queue_jobs", queue="batches", state="queued") == 2
    assert "batchpress_rq_workers" in body


def test_webhook_attempts_are_counted_by_outcome(client):
    from infra import metrics
    for outcome in ({"status_code": 200, "duration_ms": 12}, {"status_code": 500, "error": "HTTP 500"},
                    {"status_code": 302, "error": "HTTP 302: redirects are not followed"},
                    {"error": "timed out after 10 s", "duration_ms": 10000},
                    {"error": "refused: private address"}, {"error": "could not connect: x"}):
        metrics.webhook_sent(outcome)
    body = client.get("/metrics").get_data(as_text=True)
    for outcome in ("success", "http_error", "redirect", "timeout", "refused", "connection_error"):
        assert metric(body, "batchpress_webhook_attempts_total", outcome=outcome) == 1, outcome
    assert metric(body, "batchpress_webhook_seconds_count", outcome="timeout") == 1


def test_metrics_in_multiprocess_mode(env, tmp_path):
    """Under gunicorn (PROMETHEUS_MULTIPROC_DIR set) every process's samples add up."""
    script = """
import os, sys
from api import create_app
from infra.settings import get_settings
app = create_app(get_settings(), prepare_stores=False)
client = app.test_client()
for _ in range(int(sys.argv[1])):
    client.get("/healthz")
if sys.argv[2] == "print":
    sys.stdout.write(client.get("/metrics").get_data(as_text=True))
"""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = [sys.executable, "-c", script]
    subprocess.run(run + ["3", "quiet"], env=environment, cwd=ROOT, check=True, timeout=60,
                   capture_output=True)
    out = subprocess.run(run + ["2", "print"], env=environment, cwd=ROOT, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert metric(out, "batchpress_http_requests_total", method="GET", endpoint="/healthz",
                  status="200") == 5
    assert list(tmp_path.glob("*.db"))


def test_uploads_and_real_webhook_sends_are_counted(client, http_server, work):
    http_server.routes["/a.jpg"] = Route(jpeg(20, 10))
    http_server.routes["/hook"] = Route(b"", 204)
    text = f"S. No.,Product Name,Input Image Urls\n1,Mug,{http_server.url('/a.jpg')}\n"
    assert upload(client, text, webhook_url=http_server.url("/hook")).status_code == 202
    work()
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "batchpress_batches_created_total") == 1
    assert metric(body, "batchpress_webhook_attempts_total", outcome="success") == 1


def test_a_batch_of_several_threads_metrics_is_sent_together_and_at_most_a_second_late(client):
    import threading
    import time

    from infra import metrics

    def scraped() -> float:
        body = client.get("/metrics").get_data(as_text=True)
        return metric(body, "batchpress_images_reused_total", how="not_modified") or 0

    batch = metrics.batch(interval_s=1.0)

    def one_image() -> None:
        with metrics.deferred(batch):
            metrics.image_reused("not_modified", 0)
    threads = [threading.Thread(target=one_image) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert scraped() == 0  # held: the batch began less than a second ago
    time.sleep(1.0)
    one_image()  # the interval has passed: everything held goes, this image's too
    assert scraped() == 5
    one_image()
    assert scraped() == 5
    batch.flush()  # the chunk's end
    assert scraped() == 6
