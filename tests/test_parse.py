"""The streaming parse (worker/parse.py): counts that grow while the file is read, images
processed before it ends, an exact finish, and exactly-once when a parse killed half-way runs
again. The parse runs in a real worker process over the MongoDB wire stand-in, so it can be
paused (SIGSTOP) or killed (SIGKILL) at whatever point it has reached."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import SimpleWorker

from infra import db, queues, settings as settings_module, stores
from infra.jobs import chunk_job_id
from schemas.records import BatchRecord, image_id, new_batch_id, url_hash
from tests.image_factory import png
from tests.servers import Route
from tests.test_rows import errors_by_line
from worker import parse, tasks

ROOT = Path(__file__).resolve().parent.parent
ROWS, FLUSH = 60, 3

# A worker process on the batches queue, with blocks of FLUSH rows so a small file has many.
PARSE_WORKER = """
import sys
import worker.parse
from infra import queues
from rq import SimpleWorker
worker.parse.FLUSH_ROWS = int(sys.argv[1])
SimpleWorker([queues.get_queue(queues.BATCHES)], connection=queues.get_redis()).work(
    burst=True, logging_level="WARNING")
"""


@pytest.fixture()
def parse_env(wire_env, monkeypatch):
    monkeypatch.setenv("CHUNK_SIZE", "25")
    monkeypatch.setattr(parse, "FLUSH_ROWS", FLUSH)
    settings_module.get_settings.cache_clear()
    return settings_module.get_settings()


def upload_products(app_client, http_server) -> tuple[str, str]:
    """ROWS rows, each with its own image and one image shared by every row."""
    http_server.routes["/p.png"] = Route(png((8, 8)))
    shared = http_server.url("/p.png?shared")
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f'{n},Product {n},"{http_server.url(f"/p.png?row={n}")},{shared}"'
              for n in range(1, ROWS + 1)]
    response = app_client.post("/api/v1/batches", data=("\n".join(lines) + "\n").encode(),
                               headers={"Content-Type": "text/csv"})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"], shared


def start_parse_worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PARSE_WORKER, str(FLUSH)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_for_flushes(batch_id: str, child: subprocess.Popen, flushes: int):
    deadline = time.monotonic() + 60
    while True:
        batch = stores.batches().get(batch_id, any_owner=True)
        if batch.flushed >= flushes:
            return
        assert child.poll() is None, "the parse worker ended before reading any block"
        assert time.monotonic() < deadline, "the parse worker never stored a block"
        time.sleep(0.001)


def work_images() -> None:
    SimpleWorker([queues.get_queue(queues.IMAGES)], connection=queues.get_redis()).work(
        burst=True, logging_level="WARNING")


@pytest.fixture()
def wire_app(parse_env):
    from api import create_app
    app = create_app(parse_env)
    app.config["TESTING"] = True
    return app.test_client()


def test_images_are_processed_while_the_file_is_still_being_read(wire_app, http_server):
    batch_id, _ = upload_products(wire_app, http_server)
    child = start_parse_worker()
    try:
        wait_for_flushes(batch_id, child, 2)  # so the first block's chunks are queued
        os.kill(child.pid, signal.SIGSTOP)  # the parse is frozen mid-file
        work_images()  # what a second worker does meanwhile: the chunks queued so far
        during = wire_app.get(f"/api/v1/batches/{batch_id}").get_json()
        csv = wire_app.get(f"/api/v1/batches/{batch_id}/output.csv")
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.wait(timeout=60)
    assert during["status"] == "processing"
    assert during["rows"]["done_reading"] is False
    assert 0 < during["rows"]["total"] < ROWS
    assert during["images"]["total"] == 2 * during["rows"]["valid"]
    assert 0 < during["images"]["processed"] <= during["images"]["total"]
    assert csv.status_code == 409  # not until the whole file is read
    assert "still being read" in csv.get_json()["detail"]
    assert "rows.done_reading" in csv.get_json()["detail"]  # what to watch for

    work_images()
    done = wire_app.get(f"/api/v1/batches/{batch_id}").get_json()
    # The shared image was done early; the uses found after it still count, exactly once.
    assert done["status"] == "completed"
    assert done["rows"] == {"total": ROWS, "valid": ROWS, "invalid": 0, "done_reading": True}
    assert done["images"] == {"total": 2 * ROWS, "processed": 2 * ROWS, "failed": 0, "reused": 0}
    assert done["progress"] == 1.0


def test_a_re_import_counts_as_reused_the_uses_found_after_their_image_was_done(
        wire_app, http_server):
    first, _ = upload_products(wire_app, http_server)
    child = start_parse_worker()
    child.wait(timeout=60)
    work_images()
    assert wire_app.get(f"/api/v1/batches/{first}").get_json()["status"] == "completed"

    batch_id, shared = upload_products(wire_app, http_server)  # the same file again
    child = start_parse_worker()
    try:
        wait_for_flushes(batch_id, child, 2)
        os.kill(child.pid, signal.SIGSTOP)  # the shared image is reused before the rest is read
        work_images()
    finally:
        os.kill(child.pid, signal.SIGCONT)
        child.wait(timeout=60)
    work_images()
    done = wire_app.get(f"/api/v1/batches/{batch_id}").get_json()
    images = [image for item in wire_app.get(f"/api/v1/batches/{batch_id}/products?limit=500")
              .get_json()["items"] for image in item["images"]]
    assert len(images) == 2 * ROWS and all(image["reused"] for image in images)
    # every slot is a reused one, the shared image's later uses too: the count says so
    assert done["images"] == {"total": 2 * ROWS, "processed": 2 * ROWS, "failed": 0,
                              "reused": 2 * ROWS}


def test_a_parse_killed_half_way_and_run_again_stores_and_queues_everything_once(
        wire_app, http_server):
    batch_id, shared = upload_products(wire_app, http_server)
    child = start_parse_worker()
    try:
        wait_for_flushes(batch_id, child, 3)
    finally:
        child.kill()
        child.wait(timeout=60)
    killed = stores.batches().get(batch_id, any_owner=True)
    assert not killed.parsed and killed.rows_total < ROWS, "the kill came after the parse"

    tasks.parse_batch(batch_id)  # what an RQ retry or the stall sweeper runs

    batch = stores.batches().get(batch_id, any_owner=True)
    assert (batch.rows_total, batch.rows_valid, batch.images_total) == (ROWS, ROWS, 2 * ROWS)
    database = db.get_db()
    assert database.products.count_documents({"batch_id": batch_id}) == ROWS
    assert database.images.count_documents({"batch_id": batch_id}) == ROWS + 1
    assert database.images.find_one({"_id": image_id(batch_id, url_hash(shared))})[
        "occurrences"] == ROWS
    queued = queues.get_queue(queues.IMAGES).get_job_ids()
    assert len(queued) == len(set(queued))  # no chunk job queued twice
    assert sorted(queued) == sorted(chunk_job_id(batch_id, n) for n in range(batch.chunks))

    work_images()
    done = wire_app.get(f"/api/v1/batches/{batch_id}").get_json()
    assert done["status"] == "completed"
    assert done["images"] == {"total": 2 * ROWS, "processed": 2 * ROWS, "failed": 0, "reused": 0}


def test_a_repeated_serial_in_a_later_block_names_the_first_line(client, work, http_server,
                                                                 monkeypatch):
    monkeypatch.setattr(parse, "FLUSH_ROWS", 2)
    http_server.routes["/p.png"] = Route(png((8, 8)))
    url = http_server.url("/p.png")
    # Blocks of two rows: lines 2-3, 4-5, 6-7.
    text = (f"S. No.,Product Name,Input Image Urls\n7,a,{url}\n8,b,{url}\n9,c,{url}\n"
            f"9,d,{url}\n7,e,{url}\n7,f,{url}\n")
    response = client.post("/api/v1/batches", data={"file": (io.BytesIO(text.encode()), "p.csv")},
                           content_type="multipart/form-data")
    work()
    batch_id = response.get_json()["id"]
    assert errors_by_line(client, batch_id) == {
        5: "S. No.: 9 is already used on line 4",   # the same block
        6: "S. No.: 7 is already used on line 2",   # an earlier block, stored
        7: "S. No.: 7 is already used on line 2",   # again in this block: still the first line
    }
    batch = client.get(f"/api/v1/batches/{batch_id}").get_json()
    assert batch["rows"]["valid"] == 3 and batch["rows"]["invalid"] == 3
    assert batch["images"] == {"total": 3, "processed": 3, "failed": 0, "reused": 0}


# Blocks of 3 rows (lines 2-4, 5-7, 8-10, 11-13, 14): S. No. 1 again in blocks 2 and 4, 5 again
# in its own block and in block 4, and an invalid row with an S. No. used later.
REPEATS = ["1", "2", "3", "4", "1", "5", "5", "6", "x", "7", "5", "1", "8"]
REPEAT_ERRORS = {
    6: "S. No.: 1 is already used on line 2",
    8: "S. No.: 5 is already used on line 7",
    12: "S. No.: 5 is already used on line 7",
    13: "S. No.: 1 is already used on line 2",
}


def parse_text(batch_id: str, serials: list[str]) -> parse.ParseResult:
    lines = ["S. No.,Product Name,Input Image Urls"]
    lines += [f"{s},P {n},http://img.example.com/{n % 4}.jpg" for n, s in enumerate(serials)]
    body = io.BytesIO(("\n".join(lines) + "\n").encode())
    return parse.parse_into_store(batch_id, body, settings_module.get_settings())


def a_started_batch() -> str:
    batch = BatchRecord.new(batch_id=new_batch_id(), owner="alice", filename="p.csv",
                            csv_key="uploads/x.csv", csv_sha256="ab", csv_bytes=10,
                            webhook_url=None)
    stores.batches().create(batch)
    stores.batches().start(batch.id)
    return batch.id


def stored_outcome(batch_id: str):
    rows = {row.line: (row.status, row.error)
            for row, _ in stores.products().iter_rows(batch_id)}
    batch = stores.batches().get(batch_id, any_owner=True)
    return rows, (batch.rows_total, batch.rows_valid, batch.rows_invalid, batch.images_total,
                  batch.chunks, batch.flushed)


def test_repeated_serials_across_blocks_are_rejected_once_by_every_store(store, monkeypatch):
    monkeypatch.setattr(parse, "FLUSH_ROWS", 3)
    batch_id = a_started_batch()
    result = parse_text(batch_id, REPEATS)
    rows, counts = stored_outcome(batch_id)
    assert {line: error for line, (_, error) in rows.items() if error} == {
        **REPEAT_ERRORS, 10: "S. No. must be a positive whole number, got 'x'"}
    assert (result.rows_valid, result.rows_invalid) == (8, 5)
    total, valid, invalid, images, _, flushes = counts
    assert (total, valid, invalid, images, flushes) == (13, 8, 5, 8, 5)


def test_a_parse_run_again_from_the_top_rejects_nothing_new_and_counts_nothing_twice(
        store, monkeypatch):
    monkeypatch.setattr(parse, "FLUSH_ROWS", 3)
    clean = a_started_batch()
    parse_text(clean, REPEATS)
    batch_id = a_started_batch()
    parse_text(batch_id, REPEATS[:9])  # the run killed after its third block
    parse_text(batch_id, REPEATS)  # the re-run, from the top
    again = stored_outcome(batch_id)
    parse_text(batch_id, REPEATS)  # killed after its last block, before the batch was read
    # Each block's rows were stored by the run before: none is a repeat of itself.
    assert again == stored_outcome(batch_id) == stored_outcome(clean)
    queued = queues.get_queue(queues.IMAGES).get_job_ids()
    assert len(queued) == len(set(queued))
