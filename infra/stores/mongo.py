"""The stores on MongoDB (production, compose; tests on mongomock or a real server).

Documents keep the field names of the records, with `_id` for `id`. A record is read from a
document field by field, so fields a record does not know are left alone in the document.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime, timedelta
from enum import Enum

from pymongo import ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError

from infra import db
from infra.stores.interfaces import (BatchStore, IdempotencyStore, ProductStore, SourceStore,
                                     Stores, WebhookStore)
from schemas.batch import BatchStatus
from schemas.records import (ACCEPTED, ACTIVE, FAILED, PENDING, PROCESSED, RETRYABLE,
                             SUCCEEDED, AttemptRecord, BatchRecord, DeliveryRecord,
                             IdempotencyRecord, ImageOutcome, ImageRecord, ImagesAdded,
                             ProductRecord, SourceRecord, SubscriptionRecord, aware,
                             field_names, idempotency_id, image_id)
from schemas.reuse import SourceLookup
from schemas.timestamps import now

_ACTIVE = [s.value for s in ACTIVE]
_RETRYABLE = [s.value for s in RETRYABLE]
_AFTER = ReturnDocument.AFTER
_OUTCOME_FIELDS = field_names(ImageOutcome)


def _value(value):
    return value.value if isinstance(value, Enum) else value


def to_doc(record) -> dict:
    """The document of a record: its fields, `id` as `_id`."""
    doc = {}
    for name in field_names(type(record)):
        value = getattr(record, name)
        if isinstance(record, DeliveryRecord) and name == "attempts":
            value = [asdict(a) for a in value]
        doc["_id" if name == "id" else name] = _value(value)
    return doc


def from_doc(cls, doc: dict | None):
    """The record of a document (None for None); datetimes made timezone-aware."""
    if doc is None:
        return None
    values = {}
    for name in field_names(cls):
        key = "_id" if name == "id" else name
        if key in doc:
            value = doc[key]
            if isinstance(value, datetime):
                value = aware(value)
            elif cls is DeliveryRecord and name == "attempts":
                value = [from_doc(AttemptRecord, a) for a in value]
            values[name] = value
    return cls(**values)


def _slots(doc: dict | None) -> int:
    """The occurrences of an image a conditional update returned (0: it did not match)."""
    return int(doc["occurrences"]) if doc else 0


class MongoBatchStore(BatchStore):
    def create(self, batch: BatchRecord) -> BatchRecord:
        db.batches().insert_one(to_doc(batch))
        return batch

    def get(self, batch_id, owner=None, *, any_owner=False):
        query = {"_id": batch_id}
        if not any_owner:
            query["owner"] = owner
        return from_doc(BatchRecord, db.batches().find_one(query))

    def delete(self, batch_id):
        db.batches().delete_one({"_id": batch_id})

    def status_of(self, batch_id):
        doc = db.batches().find_one({"_id": batch_id}, {"status": 1})
        return BatchStatus(doc["status"]) if doc else None

    def start(self, batch_id):
        stamp = now()
        db.batches().update_one(
            {"_id": batch_id, "status": BatchStatus.QUEUED.value},
            {"$set": {"status": BatchStatus.PROCESSING.value, "started_at": stamp,
                      "updated_at": stamp}})
        return from_doc(BatchRecord, db.batches().find_one(
            {"_id": batch_id, "status": BatchStatus.PROCESSING.value}))

    def record_flush(self, batch_id, flush, *, rows_total, rows_valid, rows_invalid,
                     images_total, chunks, images_processed=0, images_failed=0,
                     images_reused=0):
        result = db.batches().update_one(
            # $not also matches a batch stored before the watermark existed
            {"_id": batch_id, "flushed": {"$not": {"$gte": flush}}},
            {"$inc": {"rows_total": rows_total, "rows_valid": rows_valid,
                      "rows_invalid": rows_invalid, "images_total": images_total,
                      "chunks": chunks, "images_processed": images_processed,
                      "images_failed": images_failed, "images_reused": images_reused},
             "$set": {"flushed": flush, "updated_at": now()}})
        return result.modified_count == 1

    def record_dialect(self, batch_id, dialect):
        db.batches().update_one({"_id": batch_id}, {"$set": {
            "csv_delimiter": dialect.delimiter, "csv_bom": dialect.bom}})

    def finish_reading(self, batch_id, *, header):
        db.batches().update_one({"_id": batch_id}, {"$set": {
            "header": header, "parsed": True, "updated_at": now()}})

    def add_image_results(self, batch_id, processed=0, failed=0, bytes_in=0, bytes_out=0,
                          reused=0):
        db.batches().update_one(
            {"_id": batch_id},
            {"$inc": {"images_processed": processed, "images_failed": failed,
                      "images_reused": reused, "bytes_in": bytes_in, "bytes_out": bytes_out},
             "$set": {"updated_at": now()}})

    def try_finish(self, batch_id):
        batch = from_doc(BatchRecord, db.batches().find_one({"_id": batch_id}))
        if batch is None or not batch.ready_to_finish:
            return None
        status, error = batch.outcome()
        stamp = now()
        return from_doc(BatchRecord, db.batches().find_one_and_update(
            {"_id": batch_id, "status": BatchStatus.PROCESSING.value},
            {"$set": {"status": status.value, "finished_at": stamp, "updated_at": stamp,
                      "error": error},
             "$inc": {"finish_seq": 1}},
            return_document=_AFTER))

    def fail(self, batch_id, error, *, unparsed_only=False):
        stamp = now()
        query: dict = {"_id": batch_id, "status": {"$in": _ACTIVE}}
        if unparsed_only:
            query["parsed"] = False
        return from_doc(BatchRecord, db.batches().find_one_and_update(
            query,
            {"$set": {"status": BatchStatus.FAILED.value, "error": error, "finished_at": stamp,
                      "updated_at": stamp}, "$inc": {"finish_seq": 1}},
            return_document=_AFTER))

    def list_page(self, owner, *, limit, after, status, created_after, created_before):
        query: dict = {"owner": owner}
        if status:
            query["status"] = status
        created: dict = {}
        if created_after:
            created["$gt"] = created_after
        if created_before:
            created["$lt"] = created_before
        if created:
            query["created_at"] = created
        if after:
            at, last_id = after
            position = {"$or": [{"created_at": {"$lt": at}},
                                {"created_at": at, "_id": {"$lt": last_id}}]}
            query = {"$and": [query, position]}
        docs = db.batches().find(query).sort([("created_at", -1), ("_id", -1)]).limit(limit)
        return [from_doc(BatchRecord, d) for d in docs]

    def cancel(self, batch_id):
        stamp = now()
        return from_doc(BatchRecord, db.batches().find_one_and_update(
            {"_id": batch_id, "status": {"$in": _ACTIVE}},
            {"$set": {"status": BatchStatus.CANCELLED.value, "finished_at": stamp,
                      "updated_at": stamp, "cancelled_at": stamp},
             "$inc": {"finish_seq": 1}},
            return_document=_AFTER))

    def start_retry(self, batch, failed_slots):
        stamp = now()
        return from_doc(BatchRecord, db.batches().find_one_and_update(
            {"_id": batch.id, "status": {"$in": _RETRYABLE}, "finish_seq": batch.finish_seq,
             "images_failed": {"$gte": failed_slots}},
            {"$set": {"status": BatchStatus.PROCESSING.value, "finished_at": None,
                      "error": None, "updated_at": stamp, "retried_at": stamp},
             "$inc": {"images_failed": -failed_slots, "retries": 1}},
            return_document=_AFTER))

    def stalled(self, before, limit=1000):
        docs = (db.batches().find({"status": {"$in": _ACTIVE}, "updated_at": {"$lt": before}})
                .sort("updated_at", 1).limit(limit))
        return [from_doc(BatchRecord, d) for d in docs]

    def claim_stalled(self, batch):
        stamp = batch.sweep_stamp()
        sweeps, progress = batch.next_sweep()
        return from_doc(BatchRecord, db.batches().find_one_and_update(
            {"_id": batch.id, "status": batch.status.value, "updated_at": batch.updated_at},
            {"$set": {"updated_at": stamp, "swept_at": stamp, "sweeps": sweeps,
                      "swept_progress": progress}},
            return_document=_AFTER))

    def set_image_counts(self, batch_id, *, processed, failed, reused=0):
        db.batches().update_one(
            {"_id": batch_id, "status": BatchStatus.PROCESSING.value},
            {"$set": {"images_processed": processed, "images_failed": failed,
                      "images_reused": reused, "updated_at": now()}})


class MongoProductStore(ProductStore):
    def write_rows(self, rows):
        if rows:
            db.products().bulk_write(
                [ReplaceOne({"_id": r.id}, to_doc(r), upsert=True) for r in rows], ordered=False)

    def add_images(self, batch_id, flush, images):
        added = ImagesAdded()
        if not images:
            return added
        inserts = []
        for image in images:
            doc = to_doc(replace(image, last_flush=flush))
            del doc["_id"]
            inserts.append(UpdateOne({"_id": image.id}, {"$setOnInsert": doc}, upsert=True))
        # By id, not by index: mongomock numbers an unordered bulk's upserts wrongly.
        created = set(db.images().bulk_write(inserts, ordered=False).upserted_ids.values())
        added.created = [image.id for image in images if image.id in created]
        for image in images:
            if image.id in created:
                continue
            # One atomic update per image seen before (rare: a URL used again blocks later),
            # for the status as of the change; see the interface on why that matters.
            before = db.images().find_one_and_update(
                {"_id": image.id, "last_flush": {"$lt": flush}},
                {"$inc": {"occurrences": image.occurrences}, "$set": {"last_flush": flush}},
                projection={"status": 1, "reused": 1})
            if before is None:
                added.seen_before = True
            elif before["status"] == PROCESSED:
                added.late_processed += image.occurrences
                added.late_reused += image.occurrences if before.get("reused") else 0
            elif before["status"] == FAILED:
                added.late_failed += image.occurrences
        return added

    def serials_taken(self, batch_id, serial_nos, before_line):
        if not serial_nos:
            return {}
        # The line is compared here, not in the filter: a bound on it would make the
        # (batch_id, line) and (batch_id, status, line) indexes, which read every earlier row,
        # good candidates for the planner (SQLite's takes one, see SERIALS_TAKEN in sqlite.py).
        docs = db.products().find(
            {"batch_id": batch_id, "serial_no": {"$in": list(serial_nos)}, "status": ACCEPTED},
            {"_id": 0, "serial_no": 1, "line": 1})
        return {doc["serial_no"]: doc["line"] for doc in docs if doc["line"] < before_line}

    def pending_images(self, batch_id, chunk):
        return [from_doc(ImageRecord, d) for d in
                db.images().find({"batch_id": batch_id, "chunk": chunk, "status": PENDING})]

    def pending_chunks(self, batch_id):
        return sorted(db.images().distinct("chunk", {"batch_id": batch_id, "status": PENDING}))

    def mark_processed(self, image, *, key, output_url, bytes_in, bytes_out, content_type,
                       kept_original=False, width=None, height=None, format=None,
                       output_format=None, sizes=None, reused=False):
        return _slots(db.images().find_one_and_update(
            {"_id": image.id, "status": PENDING},
            {"$set": {"status": PROCESSED, "output_key": key, "output_url": output_url,
                      "bytes_in": bytes_in, "bytes_out": bytes_out, "content_type": content_type,
                      "kept_original": kept_original, "reused": reused, "width": width,
                      "height": height,
                      "format": format, "output_format": output_format,
                      "sizes": dict(sizes or {}), "error": None, "error_code": None}},
            projection={"occurrences": 1}, return_document=_AFTER))

    def mark_failed(self, image, error, code, bytes_in=None):
        return _slots(db.images().find_one_and_update(
            {"_id": image.id, "status": PENDING},
            {"$set": {"status": FAILED, "error": error, "error_code": str(code),
                      "bytes_in": bytes_in}},
            projection={"occurrences": 1}, return_document=_AFTER))

    def start_attempt(self, image):
        # update_one by _id, not find_one_and_update: the count after the change is the one
        # read plus one (mongomock serves find_one_and_update by scanning the collection).
        result = db.images().update_one({"_id": image.id, "status": PENDING},
                                        {"$inc": {"attempts": 1}})
        if result.modified_count != 1:
            return None
        image.attempts = (image.attempts or 0) + 1
        return image

    def start_attempts(self, ids):
        if not ids:
            return set()
        changed = db.images().update_many({"_id": {"$in": ids}, "status": PENDING},
                                          {"$inc": {"attempts": 1}}).modified_count
        if changed == len(ids):
            return set(ids)
        # Some were done meanwhile: the ones still pending are the ones counted (an image never
        # goes back to pending while its batch is processing).
        return {d["_id"] for d in db.images().find({"_id": {"$in": ids}, "status": PENDING},
                                                   {"_id": 1})}

    def undo_attempts(self, ids):
        if ids:
            db.images().update_many({"_id": {"$in": ids}, "status": PENDING,
                                     "attempts": {"$gt": 0}}, {"$inc": {"attempts": -1}})

    def any_pending(self, batch_id):
        return db.images().find_one({"batch_id": batch_id, "status": PENDING},
                                    {"_id": 1}) is not None

    def fail_pending(self, batch_id, error, code):
        return db.images().update_many(
            {"batch_id": batch_id, "status": PENDING},
            {"$set": {"status": FAILED, "error": error, "error_code": str(code)}}).modified_count

    def images_for(self, batch_id, hashes):
        ids = [image_id(batch_id, h) for h in set(hashes)]
        if not ids:
            return {}
        return {d["hash"]: from_doc(ImageRecord, d) for d in db.images().find({"_id": {"$in": ids}})}

    def image_outcomes(self, batch_id, hashes):
        ids = [image_id(batch_id, h) for h in set(hashes)]
        if not ids:
            return {}
        docs = db.images().find({"_id": {"$in": ids}}, dict.fromkeys(_OUTCOME_FIELDS, 1))
        return {d["hash"]: ImageOutcome(**{name: d[name] for name in _OUTCOME_FIELDS if name in d})
                for d in docs}

    def rows_after(self, batch_id, *, after_line, limit, status=None):
        query = {"batch_id": batch_id, "line": {"$gt": after_line}}
        if status:
            query["status"] = status
        return [from_doc(ProductRecord, d)
                for d in db.products().find(query).sort("line", 1).limit(limit)]

    def failed_images(self, batch_id):
        return [from_doc(ImageRecord, d)
                for d in db.images().find({"batch_id": batch_id, "status": FAILED})]

    def reset_images(self, ids):
        if not ids:
            return 0
        return db.images().update_many(
            {"_id": {"$in": ids}, "status": FAILED},
            {"$set": {"status": PENDING, "error": None, "error_code": None,
                      "attempts": 0}}).modified_count

    def count_slots(self, batch_id):
        counts: dict[str, int] = {}
        for doc in db.images().find({"batch_id": batch_id},
                                    {"status": 1, "occurrences": 1, "reused": 1}):
            counts[doc["status"]] = counts.get(doc["status"], 0) + doc["occurrences"]
            if doc["status"] == PROCESSED and doc.get("reused"):
                counts["reused"] = counts.get("reused", 0) + doc["occurrences"]
        return counts




class MongoWebhookStore(WebhookStore):
    def create_subscription(self, subscription):
        db.subscriptions().insert_one(to_doc(subscription))
        return subscription

    def count_subscriptions(self, owner):
        return db.subscriptions().count_documents({"owner": owner})

    def list_subscriptions(self, owner):
        docs = db.subscriptions().find({"owner": owner}).sort([("created_at", 1), ("_id", 1)])
        return [from_doc(SubscriptionRecord, d) for d in docs]

    def get_subscription(self, subscription_id, owner=None, *, any_owner=False):
        query: dict = {"_id": subscription_id}
        if not any_owner:
            query["owner"] = owner
        return from_doc(SubscriptionRecord, db.subscriptions().find_one(query))

    def update_subscription(self, subscription_id, owner, changes):
        current = self.get_subscription(subscription_id, owner)
        if current is None:
            return None
        return from_doc(SubscriptionRecord, db.subscriptions().find_one_and_update(
            {"_id": subscription_id, "owner": owner}, {"$set": current.changed(changes)},
            return_document=_AFTER))

    def delete_subscription(self, subscription_id, owner):
        return db.subscriptions().delete_one(
            {"_id": subscription_id, "owner": owner}).deleted_count == 1

    def rotate_secret(self, subscription_id, owner):
        current = self.get_subscription(subscription_id, owner)
        if current is None:
            return None
        new = current.rotated()
        return from_doc(SubscriptionRecord, db.subscriptions().find_one_and_update(
            {"_id": subscription_id, "owner": owner, "secret": current.secret},
            {"$set": {"secret": new.secret, "previous_secret": new.previous_secret,
                      "previous_secret_expires_at": new.previous_secret_expires_at,
                      "updated_at": new.updated_at}},
            return_document=_AFTER))

    def disable_subscription(self, subscription_id, reason):
        stamp = now()
        db.subscriptions().update_one(
            {"_id": subscription_id},
            {"$set": {"enabled": False, "disabled_reason": reason, "disabled_at": stamp,
                      "updated_at": stamp}})

    def subscribers_for(self, owner, event):
        docs = (db.subscriptions().find({"owner": owner, "enabled": True, "events": event})
                .sort([("created_at", 1), ("_id", 1)]))
        return [from_doc(SubscriptionRecord, d) for d in docs]

    def insert_delivery(self, delivery):
        try:
            db.deliveries().insert_one(to_doc(delivery))
        except DuplicateKeyError:
            return False
        return True

    def get_delivery(self, delivery_id, owner=None, *, any_owner=False):
        query: dict = {"_id": delivery_id}
        if not any_owner:
            query["owner"] = owner
        return from_doc(DeliveryRecord, db.deliveries().find_one(query))

    def list_deliveries(self, batch_id):
        docs = (db.deliveries().find({"batch_id": batch_id}, {"body": 0})
                .sort([("created_at", 1), ("_id", 1)]))
        return [from_doc(DeliveryRecord, {"body": "", **d}) for d in docs]

    def claim_attempt(self, delivery_id, number, lease_until):
        return from_doc(DeliveryRecord, db.deliveries().find_one_and_update(
            {"_id": delivery_id, "status": PENDING, "next_attempt_no": number,
             "$or": [{"lease_until": None}, {"lease_until": {"$lt": now()}}]},
            {"$set": {"lease_until": lease_until}},
            return_document=_AFTER))

    def record_attempt(self, delivery_id, number, attempt, *, status, next_attempt_at):
        db.deliveries().update_one(
            {"_id": delivery_id, "next_attempt_no": number},
            {"$push": {"attempts": asdict(attempt)},
             "$inc": {"attempt_count": 1},
             "$set": {"status": status, "next_attempt_no": number + 1,
                      "next_attempt_at": next_attempt_at, "lease_until": None,
                      "last_status_code": attempt.status_code,
                      "last_error": attempt.error, "updated_at": now()}})

    def record_manual_attempt(self, delivery_id, attempt, *, succeeded):
        changes: dict = {"last_status_code": attempt.status_code,
                         "last_error": attempt.error, "updated_at": now()}
        if succeeded:
            changes.update(status=SUCCEEDED, next_attempt_at=None, lease_until=None)
        db.deliveries().update_one({"_id": delivery_id},
                                   {"$push": {"attempts": asdict(attempt)},
                                    "$inc": {"attempt_count": 1}, "$set": changes})

    def overdue(self, grace: timedelta, limit=1000):
        stamp = now()
        docs = db.deliveries().find(
            {"status": PENDING, "next_attempt_at": {"$lt": stamp - grace},
             "$or": [{"lease_until": None}, {"lease_until": {"$lt": stamp}}]}).limit(limit)
        return [from_doc(DeliveryRecord, d) for d in docs]


class MongoIdempotencyStore(IdempotencyStore):
    """The TTL index removes expired keys about once a minute; until then they are ignored."""

    def find(self, owner, key):
        return from_doc(IdempotencyRecord, db.idempotency_keys().find_one(
            {"_id": idempotency_id(owner, key), "created_at": {"$gt": now() - self.TTL}}))

    def claim(self, record):
        # `_id` is unique on every MongoDB: no extra index needed.
        for _ in range(2):
            try:
                db.idempotency_keys().insert_one(to_doc(record))
                return record
            except DuplicateKeyError:
                expired = db.idempotency_keys().delete_one(
                    {"_id": record.id, "created_at": {"$lte": now() - self.TTL}})
                if not expired.deleted_count:
                    return None
        return None

    def release(self, owner, key, batch_id):
        db.idempotency_keys().delete_one({"_id": idempotency_id(owner, key), "batch_id": batch_id})


class MongoSourceStore(SourceStore):
    """By `_id` (schemas.reuse.source_id), the index every MongoDB has."""

    def find(self, owner, fingerprint, urls):
        lookup = SourceLookup(owner, fingerprint, urls)
        if not lookup.ids:
            return {}
        return lookup.found(from_doc(SourceRecord, doc)
                            for doc in db.sources().find({"_id": {"$in": lookup.ids}}))

    def remember(self, records):
        if records:  # in order: of two with one id, the later wins
            db.sources().bulk_write([ReplaceOne({"_id": r.id}, to_doc(r), upsert=True)
                                     for r in records], ordered=True)


class MongoStores(Stores):
    name = "mongodb"

    def __init__(self):
        self.batches = MongoBatchStore()
        self.products = MongoProductStore()
        self.webhooks = MongoWebhookStore()
        self.idempotency = MongoIdempotencyStore()
        self.sources = MongoSourceStore()

    def prepare(self) -> None:
        db.ensure_indexes()

    def ping(self) -> None:
        from infra.settings import get_settings
        client = db.get_client()
        try:
            client.admin.command("ping")
        except NotImplementedError:  # an in-memory stand-in without `ping`: reading is proof
            client[get_settings().mongo_db].list_collection_names()
