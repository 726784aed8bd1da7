"""The store interfaces, each test run on every implementation: MongoDB (mongomock, or a real
server when MONGO_URL is set) and SQLite (a file in the test's folder)."""
from __future__ import annotations

import multiprocessing
import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from infra.stores.mongo import MongoStores
from infra.stores.sqlite import SERIALS_TAKEN, SqliteStores
from schemas.batch import BatchStatus
from schemas.csv_format import Dialect
from schemas.failures import FailureCode
from schemas.records import (ACCEPTED, FAILED, PENDING, PROCESSED, REJECTED, SUCCEEDED,
                             AttemptRecord, BatchRecord, DeliveryRecord, IdempotencyRecord,
                             ImageRecord, ProductRecord, SourceRecord, SubscriptionRecord,
                             new_batch_id, product_id)
from schemas.timestamps import now


def a_batch(store, owner="alice", **changes) -> BatchRecord:
    batch = BatchRecord.new(batch_id=new_batch_id(), owner=owner, filename="p.csv",
                            csv_key="uploads/x.csv", csv_sha256="ab", csv_bytes=10,
                            webhook_url=None)
    return store.batches.create(replace(batch, **changes))


def parsed_batch(store, *, images_total=4, rows_valid=2, rows_invalid=0) -> BatchRecord:
    batch = a_batch(store)
    store.batches.start(batch.id)
    assert store.batches.record_flush(batch.id, 1, rows_total=rows_valid + rows_invalid,
                                      rows_valid=rows_valid, rows_invalid=rows_invalid,
                                      images_total=images_total, chunks=2)
    store.batches.finish_reading(batch.id, header=["S. No.", "Product Name", "Input Image Urls"])
    return store.batches.get(batch.id, any_owner=True)


def race(count: int, call) -> list:
    """`call()` from `count` threads released at the same moment; their results."""
    barrier, results = threading.Barrier(count), []

    def run():
        barrier.wait()
        results.append(call())
    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


# --- batches ------------------------------------------------------------------------------------

def test_a_batch_reads_back_as_it_was_written_and_only_for_its_owner(store):
    batch = a_batch(store, webhook_url="https://hooks.example.com/x")
    assert store.batches.get(batch.id, "alice") == batch
    assert store.batches.get(batch.id, "bob") is None
    assert store.batches.get(batch.id, None) is None
    assert store.batches.get(batch.id, any_owner=True) == batch
    assert store.batches.status_of(batch.id) == BatchStatus.QUEUED
    store.batches.delete(batch.id)
    assert store.batches.get(batch.id, any_owner=True) is None
    assert store.batches.status_of(batch.id) is None


def test_a_batch_of_no_owner_is_found_by_no_owner_only(store):
    batch = a_batch(store, owner=None)
    assert store.batches.get(batch.id, None) == batch
    assert store.batches.get(batch.id, "alice") is None
    assert [b.id for b in store.batches.list_page(None, limit=5, after=None, status=None,
                                                  created_after=None, created_before=None)] == [batch.id]


def test_a_batch_finishes_exactly_once_when_its_last_images_are_counted(store):
    batch = parsed_batch(store, images_total=4, rows_valid=2, rows_invalid=1)
    assert batch.status == BatchStatus.PROCESSING and batch.started_at is not None
    assert batch.header == ["S. No.", "Product Name", "Input Image Urls"] and batch.chunks == 2
    assert store.batches.start(batch.id).status == BatchStatus.PROCESSING  # started: no-op
    store.batches.add_image_results(batch.id, processed=3)
    assert store.batches.try_finish(batch.id) is None  # one slot to go
    store.batches.add_image_results(batch.id, failed=1)
    finished = [b for b in race(6, lambda: store.batches.try_finish(batch.id)) if b]
    assert len(finished) == 1
    [done] = finished
    assert done.status == BatchStatus.COMPLETED_WITH_ERRORS and done.finish_seq == 1
    assert done.finished_at is not None and done.progress == 1.0
    assert store.batches.try_finish(batch.id) is None
    assert store.batches.cancel(batch.id) is None


def test_a_batch_whose_every_image_failed_fails_with_a_reason(store):
    batch = parsed_batch(store, images_total=2)
    store.batches.add_image_results(batch.id, failed=2)
    done = store.batches.try_finish(batch.id)
    assert done.status == BatchStatus.FAILED and done.error == "every image failed; see errors.csv"


def test_failing_an_unparsed_batch_leaves_a_parsed_one_alone(store):
    parsed = parsed_batch(store)
    assert store.batches.fail(parsed.id, "broke", unparsed_only=True) is None
    unparsed = a_batch(store)
    failed = store.batches.fail(unparsed.id, "the file could not be read", unparsed_only=True)
    assert failed.status == BatchStatus.FAILED and failed.error == "the file could not be read"
    assert failed.finish_seq == 1
    assert store.batches.fail(unparsed.id, "again") is None  # finished already
    assert store.batches.start(unparsed.id) is None  # must not run


def test_cancel_happens_once_and_a_retry_is_won_by_one_caller(store):
    batch = a_batch(store)
    cancels = [b for b in race(4, lambda: store.batches.cancel(batch.id)) if b]
    assert len(cancels) == 1 and cancels[0].status == BatchStatus.CANCELLED
    assert cancels[0].cancelled_at is not None

    batch = parsed_batch(store, images_total=3)
    store.batches.add_image_results(batch.id, processed=1, failed=2)
    done = store.batches.try_finish(batch.id)
    retried = [b for b in race(4, lambda: store.batches.start_retry(done, 2)) if b]
    assert len(retried) == 1
    [again] = retried
    assert again.status == BatchStatus.PROCESSING and again.images_failed == 0
    assert again.retries == 1 and again.finished_at is None and again.error is None
    assert store.batches.start_retry(done, 2) is None  # not finished any more


def test_batches_page_newest_first_with_filters_and_a_position(store):
    base = now() - timedelta(hours=5)
    made = [a_batch(store, created_at=base + timedelta(hours=n // 2)) for n in range(6)]
    store.batches.cancel(made[1].id)
    store.batches.cancel(made[4].id)
    a_batch(store, owner="bob")
    expected = sorted(made, key=lambda b: (b.created_at, b.id), reverse=True)

    def page(**options):
        values = {"limit": 10, "after": None, "status": None, "created_after": None,
                  "created_before": None, **options}
        return [b.id for b in store.batches.list_page("alice", **values)]

    assert page() == [b.id for b in expected]
    first = page(limit=3)
    last = next(b for b in expected if b.id == first[-1])
    assert first + page(after=(last.created_at, last.id)) == [b.id for b in expected]
    assert page(status="cancelled") == [b.id for b in expected if b.id in {made[1].id, made[4].id}]
    middle = base + timedelta(hours=1)
    assert set(page(created_after=middle - timedelta(minutes=1),
                    created_before=middle + timedelta(minutes=1))) == {made[2].id, made[3].id}


def test_a_stalled_batch_is_claimed_once_and_counts_sweeps_without_progress(store):
    batch = parsed_batch(store)
    later = now() + timedelta(seconds=5)
    [stalled] = [b for b in store.batches.stalled(later) if b.id == batch.id]
    claims = [b for b in race(3, lambda: store.batches.claim_stalled(stalled)) if b]
    assert len(claims) == 1 and claims[0].sweeps == 1
    again = store.batches.claim_stalled(claims[0])
    assert again.sweeps == 2  # no progress in between
    store.batches.add_image_results(batch.id, processed=1)
    progressed = store.batches.claim_stalled(store.batches.get(batch.id, any_owner=True))
    assert progressed.sweeps == 1
    store.batches.set_image_counts(batch.id, processed=3, failed=1)
    current = store.batches.get(batch.id, any_owner=True)
    assert (current.images_processed, current.images_failed) == (3, 1)
    assert store.batches.stalled(now() - timedelta(hours=1)) == []


# --- product rows and images --------------------------------------------------------------------

def rows_and_images(batch_id: str, count: int, urls_per_row: int = 2, chunk_size: int = 3):
    rows, images = [], {}
    for line in range(2, count + 2):
        urls = [f"https://img.example.com/{(line + k) % (count + 1)}.jpg"
                for k in range(urls_per_row)]
        row = ProductRecord(id=product_id(batch_id, line), batch_id=batch_id, line=line,
                            cells=[str(line - 1), f"P {line}", ",".join(urls), "extra"],
                            serial_raw=str(line - 1), url_slots=len(urls), status=ACCEPTED,
                            serial_no=line - 1, product_name=f"P {line}",
                            input_image_urls=urls)
        for url in urls:
            image = images.get(url) or ImageRecord.pending(batch_id, url, len(images) // chunk_size)
            images[url] = image
            image.occurrences += 1
            row.image_hashes.append(image.hash)
        rows.append(row)
    return rows, list(images.values())


def test_rows_and_images_read_back_in_line_order_joined(store):
    batch_id = new_batch_id()
    rows, images = rows_and_images(batch_id, 7)
    rejected = ProductRecord(id=product_id(batch_id, 9), batch_id=batch_id, line=9,
                             cells=["x", ""], serial_raw="x", url_slots=1, status=REJECTED,
                             error="S. No. must be a positive whole number")
    store.products.write_rows(rows[3:] + [rejected])
    store.products.write_rows(rows[:3])
    store.products.write_rows(rows[:3])  # a re-run parse writes the same rows again
    store.products.add_images(batch_id, 1, images)
    seen = [(row, found) for row, found in store.products.iter_rows(batch_id, block=2)]
    assert [row for row, _ in seen] == rows + [rejected]
    for row, found in seen:
        assert all(found[h].hash == h and found[h].status == PENDING for h in row.image_hashes)
    assert [r.line for r, _ in store.products.iter_rows(batch_id, status=REJECTED)] == [9]
    page, last = store.products.page_products(batch_id, after_line=0, limit=5)
    assert [r.line for r, _ in page] == [2, 3, 4, 5, 6] and last == 6
    page, last = store.products.page_products(batch_id, after_line=last, limit=5)
    assert [r.line for r, _ in page] == [7, 8] and last is None
    assert store.products.images_for(batch_id, []) == {}
    assert store.products.image_outcomes(batch_id, []) == {}


def test_the_exports_read_each_images_state_and_outputs(store):
    batch_id = new_batch_id()
    _, images = rows_and_images(batch_id, 5)
    store.products.add_images(batch_id, 1, images)
    done, failed, pending = store.products.pending_images(batch_id, 0)
    store.products.mark_processed(done, key="outputs/d.jpg", output_url="http://x/d.jpg",
                                  bytes_in=100, bytes_out=40, content_type="image/jpeg",
                                  sizes={"thumb": "http://x/d-thumb.jpg"})
    store.products.mark_failed(failed, "HTTP 404", FailureCode.HTTP_STATUS)
    found = store.products.image_outcomes(batch_id, [done.hash, failed.hash, pending.hash,
                                                     "0" * 32])
    assert set(found) == {done.hash, failed.hash, pending.hash}
    assert (found[done.hash].status, found[done.hash].output_url, found[done.hash].output_key,
            found[done.hash].sizes) == (PROCESSED, "http://x/d.jpg", "outputs/d.jpg",
                                        {"thumb": "http://x/d-thumb.jpg"})
    assert (found[failed.hash].status, found[failed.hash].error,
            found[failed.hash].error_code) == (FAILED, "HTTP 404", "http_status")
    assert (found[pending.hash].status, found[pending.hash].output_url,
            found[pending.hash].sizes) == (PENDING, None, {})


def test_an_image_is_processed_once_however_many_workers_race_for_it(store):
    batch_id = new_batch_id()
    _, images = rows_and_images(batch_id, 5)
    store.products.add_images(batch_id, 1, images)
    assert store.products.pending_chunks(batch_id) == [0, 1]
    [image, *_] = store.products.pending_images(batch_id, 0)
    started = store.products.start_attempt(image)
    assert started.attempts == 1
    wins = race(6, lambda: store.products.mark_processed(
        image, key="outputs/k.jpg", output_url="http://x/k.jpg", bytes_in=100, bytes_out=40,
        content_type="image/jpeg", kept_original=True))
    assert [bool(w) for w in wins].count(True) == 1
    assert store.products.start_attempt(image) is None  # no longer pending
    assert not store.products.mark_failed(image, "late", FailureCode.INTERNAL_ERROR)
    stored = store.products.images_for(batch_id, [image.hash])[image.hash]
    assert (stored.status, stored.output_key, stored.bytes_out, stored.kept_original) == (
        PROCESSED, "outputs/k.jpg", 40, True)


def test_a_chunk_runs_attempts_are_claimed_and_given_back_in_one_update(store):
    batch_id = new_batch_id()
    _, images = rows_and_images(batch_id, 5)
    store.products.add_images(batch_id, 1, images)
    first, second, third = store.products.pending_images(batch_id, 0)
    assert store.products.any_pending(batch_id)
    assert store.products.mark_processed(first, key="k", output_url="u", bytes_in=1,
                                         bytes_out=1, content_type="image/jpeg")
    ids = [first.id, second.id, third.id]
    assert store.products.start_attempts(ids) == {second.id, third.id}  # not the done one
    assert store.products.start_attempts([]) == set()
    claimed = race(4, lambda: store.products.start_attempts(ids))  # every caller counts one
    assert all(c == {second.id, third.id} for c in claimed)
    found = store.products.images_for(batch_id, [im.hash for im in images])
    assert (found[second.hash].attempts, found[third.hash].attempts) == (5, 5)
    store.products.undo_attempts([second.id, first.id])
    store.products.undo_attempt(third)
    found = store.products.images_for(batch_id, [im.hash for im in images])
    assert (found[first.hash].attempts, found[second.hash].attempts,
            found[third.hash].attempts) == (0, 4, 4)
    store.products.fail_pending(batch_id, "gave up", FailureCode.STALLED)
    assert not store.products.any_pending(batch_id)
    assert not store.products.any_pending(new_batch_id())


def test_a_re_parse_keeps_what_was_done_and_retry_resets_only_failures(store):
    batch_id = new_batch_id()
    _, images = rows_and_images(batch_id, 5)
    store.products.add_images(batch_id, 1, images)
    first, second, third = store.products.pending_images(batch_id, 0)
    assert store.products.mark_processed(first, key="k", output_url="u", bytes_in=1,
                                         bytes_out=1, content_type="image/jpeg")
    assert store.products.mark_failed(second, "HTTP 404", FailureCode.HTTP_STATUS, bytes_in=None)
    store.products.start_attempt(third)
    store.products.add_images(batch_id, 1, images)  # the parse job ran again
    found = store.products.images_for(batch_id, [im.hash for im in images])
    assert found[first.hash].status == PROCESSED and found[second.hash].error == "HTTP 404"
    assert found[second.hash].error_code == "http_status"
    assert found[third.hash].attempts == 1
    assert [im.id for im in store.products.failed_images(batch_id)] == [second.id]
    slots = {im.id: im.occurrences for im in images}
    assert store.products.count_slots(batch_id) == {
        PROCESSED: slots[first.id], FAILED: slots[second.id],
        PENDING: sum(slots.values()) - slots[first.id] - slots[second.id]}
    assert store.products.reset_images([second.id, first.id]) == 1  # only the failed one
    reset = store.products.images_for(batch_id, [second.hash])[second.hash]
    assert (reset.status, reset.error, reset.error_code, reset.attempts) == (PENDING, None, None, 0)
    assert store.products.fail_pending(batch_id, "gave up", FailureCode.STALLED) == len(images) - 1
    assert store.products.images_for(batch_id, [third.hash])[third.hash].error_code == "stalled"
    assert store.products.pending_chunks(batch_id) == []


def test_a_block_of_image_uses_is_added_once_and_late_uses_of_done_images_count_as_done(store):
    batch_id = new_batch_id()
    done_url, failed_url, new_url = (f"https://img.example.com/{n}.jpg" for n in range(3))
    first = [replace(ImageRecord.pending(batch_id, url, 0), occurrences=2)
             for url in (done_url, failed_url)]
    added = store.products.add_images(batch_id, 1, first)
    assert sorted(added.created) == sorted(im.id for im in first) and not added.seen_before
    done, failed = store.products.pending_images(batch_id, 0)
    assert store.products.mark_processed(done, key="k", output_url="u", bytes_in=1,
                                         bytes_out=1, content_type="image/jpeg") == 2
    assert store.products.mark_failed(failed, "HTTP 404", "http_status") == 2

    later = [replace(ImageRecord.pending(batch_id, url, 1), occurrences=n)
             for url, n in ((done_url, 3), (failed_url, 1), (new_url, 1))]
    added = store.products.add_images(batch_id, 2, later)
    assert added.created == [later[2].id]
    assert (added.late_processed, added.late_failed, added.seen_before) == (3, 1, False)
    again = store.products.add_images(batch_id, 2, later)  # a re-run of block 2
    assert (again.created, again.late_processed, again.seen_before) == ([], 0, True)
    assert store.products.add_images(batch_id, 1, first).seen_before  # and of block 1
    found = store.products.images_for(batch_id, [im.hash for im in later])
    assert [found[im.hash].occurrences for im in later] == [5, 3, 1]
    assert [found[im.hash].chunk for im in later] == [0, 0, 1]  # a URL keeps its chunk
    assert store.products.count_slots(batch_id) == {PROCESSED: 5, FAILED: 3, PENDING: 1}


def test_late_uses_of_a_reused_image_count_as_reused(store):
    batch_id = new_batch_id()
    reused_url, encoded_url = "https://img.example.com/r.jpg", "https://img.example.com/e.jpg"
    first = [replace(ImageRecord.pending(batch_id, url, 0), occurrences=1)
             for url in (reused_url, encoded_url)]
    store.products.add_images(batch_id, 1, first)
    reused, encoded = store.products.pending_images(batch_id, 0)
    assert reused.url == reused_url
    store.products.mark_processed(reused, key="k", output_url="u", bytes_in=1, bytes_out=1,
                                  content_type="image/jpeg", reused=True)
    store.products.mark_processed(encoded, key="k2", output_url="u2", bytes_in=1, bytes_out=1,
                                  content_type="image/jpeg")

    later = [replace(ImageRecord.pending(batch_id, url, 1), occurrences=n)
             for url, n in ((reused_url, 4), (encoded_url, 2))]
    added = store.products.add_images(batch_id, 2, later)
    assert (added.late_processed, added.late_reused) == (6, 4)
    assert store.products.add_images(batch_id, 2, later).late_reused == 0  # a re-run
    assert store.products.count_slots(batch_id) == {PROCESSED: 8, "reused": 5}


def test_block_counts_are_added_once_per_block(store):
    batch = a_batch(store)
    store.batches.start(batch.id)
    counts = dict(rows_total=3, rows_valid=2, rows_invalid=1, images_total=4, chunks=2)
    assert store.batches.record_flush(batch.id, 1, **counts)
    assert not store.batches.record_flush(batch.id, 1, **counts)  # a re-run parse
    assert store.batches.record_flush(batch.id, 2, **counts, images_processed=2, images_reused=1)
    assert not store.batches.record_flush(batch.id, 1, **counts)
    reading = store.batches.get(batch.id, any_owner=True)
    assert (reading.rows_total, reading.rows_valid, reading.images_total, reading.chunks,
            reading.images_processed, reading.flushed, reading.parsed) == (6, 4, 8, 4, 2, 2, False)
    assert reading.images_reused == 1
    assert store.batches.try_finish(batch.id) is None  # still being read
    store.batches.finish_reading(batch.id, header=["a", "b", "c"])
    assert store.batches.get(batch.id, any_owner=True).parsed


def test_a_batch_keeps_its_inputs_dialect(store):
    batch = a_batch(store)
    fresh = store.batches.get(batch.id, any_owner=True)
    assert fresh.csv_delimiter is None and fresh.dialect == Dialect(",", bom=False)  # unread yet
    store.batches.record_dialect(batch.id, Dialect(";", bom=True))
    assert store.batches.get(batch.id, any_owner=True).dialect == Dialect(";", bom=True)
    store.batches.record_dialect(batch.id, Dialect("\t", bom=False))  # e.g. a retried batch's
    kept = store.batches.get(batch.id, any_owner=True)
    assert (kept.csv_delimiter, kept.csv_bom) == ("\t", False)
    assert [b.dialect for b in store.batches.list_page(
        "alice", limit=5, after=None, status=None, created_after=None,
        created_before=None)] == [Dialect("\t", bom=False)]


def test_serials_taken_are_those_of_accepted_rows_at_earlier_lines_of_the_batch(store):
    batch_id = new_batch_id()
    rows, _ = rows_and_images(batch_id, 4)  # lines 2-5, S. No. 1-4
    rejected = ProductRecord(id=product_id(batch_id, 6), batch_id=batch_id, line=6,
                             cells=["9", "x", ""], serial_raw="9", url_slots=1, status=REJECTED,
                             error="Input Image Urls: at least one URL is required",
                             serial_no=9)
    store.products.write_rows(rows + [rejected])
    taken = store.products.serials_taken
    assert taken(batch_id, [1, 3, 4, 9, 999], before_line=5) == {1: 2, 3: 4}
    assert taken(batch_id, [1, 3, 4, 9], before_line=99) == {1: 2, 3: 4, 4: 5}
    assert taken(batch_id, [4], before_line=5) == {}  # the row at line 5 itself: not before it
    assert taken(new_batch_id(), [1, 3], before_line=99) == {}
    assert taken(batch_id, [], before_line=99) == {}


# --- sources: what re-imports reuse -------------------------------------------------------------

def a_source(owner, url, fingerprint="f1", **changes) -> SourceRecord:
    values = dict(sha256="ab" * 32, batch_id="bat_1", output_key=f"outputs/bat_1/h/{url[-5:]}",
                  content_type="image/jpeg", bytes_in=1000, bytes_out=400, width=96, height=64,
                  format="png", output_format="webp", kept_original=False,
                  size_keys={"thumb": "outputs/bat_1/h/x-thumb.jpg", "big": None},
                  final_url=url + "?final", etag='"e1"',
                  last_modified="Sat, 05 Dec 2026 10:00:00 GMT")
    values.update(changes)
    return SourceRecord.new(owner=owner, url=url, fingerprint=fingerprint, **values)


def test_a_source_is_found_only_for_its_owner_and_fingerprint_and_the_newest_wins(store):
    urls = [f"https://img.example.com/{n}.jpg" for n in range(3)]
    store.sources.remember([a_source("alice", url) for url in urls[:2]])
    store.sources.remember([a_source(None, urls[0], etag='"none"')])
    found = store.sources.find("alice", "f1", urls + urls)  # one read for a chunk's URLs
    assert set(found) == set(urls[:2])
    record = found[urls[0]]
    assert record == replace(a_source("alice", urls[0]), updated_at=record.updated_at)
    assert record.size_keys == {"thumb": "outputs/bat_1/h/x-thumb.jpg", "big": None}
    assert store.sources.find("bob", "f1", urls) == {}
    assert store.sources.find("alice", "f2", urls) == {}
    assert store.sources.find("None", "f1", urls) == {}  # no owner is not a key named "None"
    assert store.sources.find(None, "f1", urls)[urls[0]].etag == '"none"'
    assert store.sources.find("alice", "f1", []) == {}

    store.sources.remember([a_source("alice", urls[0], batch_id="bat_2", etag=None,
                                     output_key="outputs/bat_2/h/0.jpg")])
    newest = store.sources.find("alice", "f1", [urls[0]])[urls[0]]
    assert (newest.batch_id, newest.etag, newest.output_key) == ("bat_2", None,
                                                                 "outputs/bat_2/h/0.jpg")


def test_sources_remembered_together_are_each_stored_and_of_one_id_the_later_wins(store):
    urls = [f"https://img.example.com/{n}.jpg" for n in range(3)]
    store.sources.remember([])  # nothing to write
    store.sources.remember([a_source("alice", urls[0]), a_source("alice", urls[1]),
                            a_source("alice", urls[0], batch_id="bat_3", etag='"e3"'),
                            a_source("bob", urls[2])])
    found = store.sources.find("alice", "f1", urls)
    assert set(found) == set(urls[:2])
    assert (found[urls[0]].batch_id, found[urls[0]].etag) == ("bat_3", '"e3"')
    assert found[urls[1]].batch_id == "bat_1"
    assert set(store.sources.find("bob", "f1", urls)) == {urls[2]}


def test_reused_images_are_counted_apart_and_re_derived(store):
    batch = parsed_batch(store, images_total=4)
    _, images = rows_and_images(batch.id, 2, urls_per_row=1)
    store.products.add_images(batch.id, 1, images)
    first, second = store.products.pending_images(batch.id, 0)
    for image, reused in ((first, True), (second, False)):
        slots = store.products.mark_processed(image, key="k", output_url="u", bytes_in=10,
                                              bytes_out=4, content_type="image/jpeg",
                                              reused=reused)
        store.batches.add_image_results(batch.id, processed=slots, bytes_in=10, bytes_out=4,
                                        reused=slots if reused else 0)
    found = store.products.images_for(batch.id, [first.hash, second.hash])
    assert (found[first.hash].reused, found[second.hash].reused) == (True, False)
    counted = store.batches.get(batch.id, any_owner=True)
    assert counted.images_reused == first.occurrences
    assert store.products.count_slots(batch.id)["reused"] == first.occurrences
    store.batches.set_image_counts(batch.id, processed=0, failed=0, reused=0)
    assert store.batches.get(batch.id, any_owner=True).images_reused == 0


# The queries the pipeline makes per block and per chunk, and the index each must be served by
# (its equality fields first): none may scan a batch's rows or images, let alone the collection.
HOT_QUERIES = {
    "images": [("batch_id", "chunk", "status"),   # a chunk's pending images
               ("batch_id", "status", "chunk")],  # chunks with pending images; failed ones
    "products": [("batch_id", "line"),             # output.csv, in line order
                 ("batch_id", "status", "line"),   # products pages (accepted rows)
                 ("batch_id", "serial_no")],       # a block's repeated S. No.s
}


def test_every_hot_query_of_mongodb_has_its_index(env):
    from infra import db
    MongoStores().prepare()
    for collection, shapes in HOT_QUERIES.items():
        keys = {tuple(k for k, _ in index["key"])
                for index in db.get_db()[collection].index_information().values()}
        assert set(shapes) <= keys, collection


@pytest.mark.parametrize("sql, params", [
    ("SELECT id FROM images WHERE batch_id = ? AND chunk = ? AND status = ?", ("b", 1, "pending")),
    ("SELECT DISTINCT chunk FROM images WHERE batch_id = ? AND status = ? ORDER BY chunk",
     ("b", "pending")),
    (SERIALS_TAKEN, ("b", "[1, 2, 3]", "accepted", 1000)),  # a block's repeated S. No.s
    ("SELECT id FROM products WHERE batch_id = ? AND status = ? AND line > ? ORDER BY line",
     ("b", "accepted", 0)),
    ("SELECT url FROM sources WHERE id IN (?, ?)", ("a", "b")),
])
def test_every_hot_query_of_sqlite_uses_an_index(tmp_path, sql, params):
    implementation = SqliteStores(str(tmp_path / "plan.sqlite3"))
    implementation.prepare()
    plan = " ".join(str(row[-1]) for row in implementation.database.all(
        "EXPLAIN QUERY PLAN " + sql, params))
    assert "USING" in plan and "INDEX" in plan and "TEMP B-TREE" not in plan, plan


def test_a_blocks_serial_query_of_sqlite_looks_each_serial_up_not_the_earlier_lines(tmp_path):
    # Any index would do for the test above; (batch_id, status, line) would read every earlier
    # row of the batch, a cost that grows with the file.
    implementation = SqliteStores(str(tmp_path / "plan.sqlite3"))
    implementation.prepare()
    plan = " ".join(str(row[-1]) for row in implementation.database.all(
        "EXPLAIN QUERY PLAN " + SERIALS_TAKEN, ("b", "[1, 2, 3]", "accepted", 1000)))
    assert "USING INDEX products_batch_serial (batch_id=? AND serial_no=?)" in plan, plan


# --- webhooks -----------------------------------------------------------------------------------

def test_subscriptions_are_kept_per_owner_and_rotate_their_secret(store):
    hooks = store.webhooks
    first = hooks.create_subscription(SubscriptionRecord.new(
        owner="alice", url="https://a.example.com/h", events=["batch.completed"],
        description="first"))
    second = hooks.create_subscription(SubscriptionRecord.new(
        owner="alice", url="https://b.example.com/h",
        events=["batch.failed", "batch.completed"], description=None))
    hooks.create_subscription(SubscriptionRecord.new(
        owner="bob", url="https://c.example.com/h", events=["batch.failed"], description=None))
    assert hooks.get_subscription(first.id, "alice") == first
    assert hooks.get_subscription(first.id, "bob") is None
    assert [s.id for s in hooks.list_subscriptions("alice")] == [
        s.id for s in sorted([first, second], key=lambda s: (s.created_at, s.id))]
    assert hooks.count_subscriptions("alice") == 2
    assert [s.id for s in hooks.subscribers_for("alice", "batch.failed")] == [second.id]

    hooks.disable_subscription(second.id, "the endpoint answered 410 Gone")
    assert hooks.subscribers_for("alice", "batch.failed") == []
    enabled = hooks.update_subscription(second.id, "alice", {"enabled": True,
                                                             "events": ["batch.failed"]})
    assert enabled.enabled and enabled.disabled_reason is None and enabled.events == ["batch.failed"]
    assert hooks.update_subscription(second.id, "bob", {"enabled": False}) is None

    rotated = hooks.rotate_secret(first.id, "alice")
    assert rotated.secret != first.secret and rotated.previous_secret == first.secret
    assert rotated.signing_secrets() == [rotated.secret, first.secret]
    assert rotated.signing_secrets(at=now() + timedelta(hours=25)) == [rotated.secret]
    assert hooks.get_subscription(first.id, "alice") == rotated
    assert not hooks.delete_subscription(first.id, "bob")
    assert hooks.delete_subscription(first.id, "alice")
    assert hooks.get_subscription(first.id, any_owner=True) is None


def test_a_delivery_is_stored_once_and_each_attempt_is_claimed_once(store):
    hooks = store.webhooks
    delivery = DeliveryRecord(id="msg_b_1_u1", batch_id="bat_b", owner="alice",
                              event="batch.completed", finish_seq=1, url="https://h/x",
                              subscription_id=None, body='{"type":"batch.completed"}')
    assert hooks.insert_delivery(delivery)
    assert not hooks.insert_delivery(delivery)
    assert hooks.get_delivery(delivery.id, "alice") == delivery
    assert hooks.get_delivery(delivery.id, "bob") is None
    lease = now() + timedelta(seconds=40)
    claims = [d for d in race(4, lambda: hooks.claim_attempt(delivery.id, 1, lease)) if d]
    assert len(claims) == 1 and claims[0].lease_until == lease
    assert hooks.claim_attempt(delivery.id, 2, lease) is None  # not its turn
    retry_at = now() + timedelta(seconds=30)
    attempt = AttemptRecord.of(at=now(), number=1, manual=False, url="https://h/x",
                               outcome={"status_code": 500, "error": "HTTP 500",
                                        "duration_ms": 12, "response": "oops"},
                               next_attempt_at=retry_at)
    hooks.record_attempt(delivery.id, 1, attempt, status=PENDING, next_attempt_at=retry_at)
    hooks.record_attempt(delivery.id, 1, attempt, status=PENDING, next_attempt_at=retry_at)
    after = hooks.get_delivery(delivery.id, any_owner=True)
    assert after.attempts == [attempt] and after.attempt_count == 1
    assert (after.next_attempt_no, after.next_attempt_at, after.lease_until) == (2, retry_at, None)
    assert after.last_status_code == 500 and after.last_error == "HTTP 500"
    assert hooks.overdue(timedelta(0)) == []  # due in 30 s

    manual = AttemptRecord.of(at=now(), number=2, manual=True, url="https://h/x",
                              outcome={"status_code": 204, "duration_ms": 3})
    hooks.record_manual_attempt(delivery.id, manual, succeeded=True)
    done = hooks.get_delivery(delivery.id, any_owner=True)
    assert done.status == SUCCEEDED and done.attempts == [attempt, manual]
    assert done.next_attempt_at is None
    assert [d.id for d in hooks.list_deliveries("bat_b")] == [delivery.id]


def test_an_overdue_delivery_is_found_unless_a_worker_holds_it(store):
    hooks = store.webhooks
    late = DeliveryRecord(id="msg_late", batch_id="bat_l", owner=None, event="batch.failed",
                          finish_seq=1, url="https://h/x", subscription_id=None, body="{}",
                          next_attempt_at=now() - timedelta(minutes=5))
    hooks.insert_delivery(late)
    assert [(d.id, d.next_attempt_no) for d in hooks.overdue(timedelta(seconds=60))] == [
        ("msg_late", 1)]
    hooks.claim_attempt(late.id, 1, now() + timedelta(minutes=1))
    assert hooks.overdue(timedelta(seconds=60)) == []


# --- idempotency keys ---------------------------------------------------------------------------

def test_an_idempotency_key_is_claimed_by_one_request_and_forgotten_after_a_day(store):
    keys = store.idempotency
    claims = race(4, lambda: keys.claim(IdempotencyRecord.new("alice", "k1", batch_id="bat_1",
                                                              fingerprint="f")))
    assert sum(c is not None for c in claims) == 1
    assert keys.find("alice", "k1").batch_id == "bat_1"
    assert keys.find("bob", "k1") is None
    keys.release("alice", "k1", "bat_other")  # another request's batch: kept
    assert keys.find("alice", "k1") is not None
    keys.release("alice", "k1", "bat_1")
    assert keys.find("alice", "k1") is None

    old = replace(IdempotencyRecord.new("alice", "k2", batch_id="bat_2", fingerprint="f"),
                  created_at=now() - timedelta(hours=25))
    assert keys.claim(old) is not None
    assert keys.find("alice", "k2") is None
    assert keys.claim(IdempotencyRecord.new("alice", "k2", batch_id="bat_3",
                                            fingerprint="g")) is not None
    assert keys.find("alice", "k2").batch_id == "bat_3"


# --- SQLite across processes --------------------------------------------------------------------

def _worker_process(path: str, batch_id: str, results) -> None:
    store = SqliteStores(path)
    won = 0
    for chunk in store.products.pending_chunks(batch_id):
        for image in store.products.pending_images(batch_id, chunk):
            if store.products.mark_processed(image, key="k", output_url="u", bytes_in=1,
                                             bytes_out=1, content_type="image/jpeg"):
                store.batches.add_image_results(batch_id, processed=image.occurrences)
                won += 1
        store.batches.try_finish(batch_id) and results.put("finished")
    results.put(won)


def test_sqlite_processes_sharing_the_file_count_every_image_once(tmp_path):
    path = str(tmp_path / "shared.sqlite3")
    store = SqliteStores(path)
    store.prepare()
    batch_id = new_batch_id()
    _, images = rows_and_images(batch_id, 300, chunk_size=20)
    store.products.add_images(batch_id, 1, images)
    total = sum(im.occurrences for im in images)
    store.batches.create(replace(BatchRecord.new(
        batch_id=batch_id, owner=None, filename=None, csv_key="k", csv_sha256="",
        csv_bytes=0, webhook_url=None), status=BatchStatus.PROCESSING, parsed=True,
        images_total=total, rows_valid=300, rows_total=300))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_worker_process, args=(path, batch_id, results))
                 for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    reported = [results.get(timeout=5) for _ in range(3 + 1)]
    assert reported.count("finished") == 1
    assert sum(r for r in reported if r != "finished") == len(images)
    done = store.batches.get(batch_id, any_owner=True)
    assert done.status == BatchStatus.COMPLETED and done.images_processed == total


def test_a_sqlite_file_from_before_gets_the_columns_added_since(tmp_path):
    import sqlite3
    path = str(tmp_path / "old.sqlite3")
    with sqlite3.connect(path) as conn:  # the images table as it was before image facts
        conn.execute("CREATE TABLE images (id PRIMARY KEY, batch_id, url, hash, occurrences, "
                     "chunk, status, output_url, output_key, error, bytes_in, bytes_out, "
                     "content_type, kept_original INTEGER, attempts)")
    store = SqliteStores(path)
    store.prepare()
    batch_id = new_batch_id()
    _, images = rows_and_images(batch_id, 2)
    store.products.add_images(batch_id, 1, images)
    [image, *_] = store.products.pending_images(batch_id, 0)
    assert store.products.mark_processed(image, key="k", output_url="u", bytes_in=9, bytes_out=4,
                                         content_type="image/webp", width=3, height=2,
                                         format="png", output_format="webp")
    stored = store.products.images_for(batch_id, [image.hash])[image.hash]
    assert (stored.width, stored.height, stored.format, stored.output_format) == (
        3, 2, "png", "webp")


def test_a_sqlite_file_from_before_the_dialect_keeps_its_batches_and_gains_it(tmp_path):
    import sqlite3
    path = str(tmp_path / "old.sqlite3")
    before = SqliteStores(path)
    before.prepare()
    old = a_batch(before)
    with sqlite3.connect(path) as conn:  # the batches table as it was before the dialect
        conn.execute("ALTER TABLE batches DROP COLUMN csv_delimiter")
        conn.execute("ALTER TABLE batches DROP COLUMN csv_bom")
    store = SqliteStores(path)
    store.prepare()
    kept = store.batches.get(old.id, any_owner=True)
    assert kept.filename == "p.csv" and kept.dialect == Dialect(",", bom=False)
    store.batches.record_dialect(old.id, Dialect(";", bom=True))
    assert store.batches.get(old.id, any_owner=True).dialect == Dialect(";", bom=True)
