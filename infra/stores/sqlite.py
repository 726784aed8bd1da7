"""The stores on SQLite (stdlib sqlite3): what the embedded default keeps on disk.

One file in WAL mode, so readers never wait for the writer and several processes on one machine
can share it: each process (and each thread) opens its own connection, a writer waits up to
BUSY_TIMEOUT_MS for another's transaction, and every state change is one conditional UPDATE
(or a read and its write inside one `BEGIN IMMEDIATE` transaction), so exactly-once holds
across processes as it does on MongoDB. Times are kept as integer milliseconds since the epoch
(MongoDB's precision), lists as JSON text; every query the service makes has an index.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from datetime import datetime, timedelta, timezone
from json.scanner import make_scanner

from infra.per_process import per_process
from infra.stores.interfaces import (BatchStore, IdempotencyStore, ProductStore, SourceStore,
                                     Stores, WebhookStore)
from schemas.batch import BatchStatus
from schemas.records import (ACCEPTED, ACTIVE, FAILED, PENDING, PROCESSED, RETRYABLE,
                             SUCCEEDED, AttemptRecord, BatchRecord, DeliveryRecord,
                             IdempotencyRecord, ImageOutcome, ImageRecord, ImagesAdded,
                             ProductRecord, SourceRecord, SubscriptionRecord, idempotency_id,
                             image_id)
from schemas.reuse import SourceLookup
from schemas.timestamps import now

BUSY_TIMEOUT_MS = 30_000
IN_CHUNK = 500  # SQLite's limit on parameters per statement is 32766; stay far below it
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS = timedelta(milliseconds=1)

_ACTIVE = tuple(s.value for s in ACTIVE)
_RETRYABLE = tuple(s.value for s in RETRYABLE)


def to_ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - EPOCH) // MS


def from_ms(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + value * MS


class Table:
    """A record type as a table: one column per field; datetimes as ms, lists as JSON."""

    def __init__(self, name: str, cls, *, key: str = "id"):
        self.name, self.cls = name, cls
        self.columns = [f.name for f in fields(cls)]
        self.kinds = {f.name: _kind(f) for f in fields(cls)}
        self.select = f"SELECT {', '.join(self.columns)} FROM {name}"
        self.insert = (f"INSERT INTO {name} ({', '.join(self.columns)}) "
                       f"VALUES ({', '.join('?' * len(self.columns))})")
        self.key = key
        # (position, converter) of the columns not stored as the record keeps them
        self.decoders = [(index, _DECODERS[self.kinds[column]])
                         for index, column in enumerate(self.columns)
                         if self.kinds[column] in _DECODERS]

    def column_sql(self, column: str) -> str:
        types = {"time": "INTEGER", "json": "TEXT", "bool": "INTEGER", "value": ""}
        return f"{column} {types[self.kinds[column]]}".strip()

    def create_sql(self) -> str:
        cols = [self.column_sql(c) + (" PRIMARY KEY" if c == self.key else "")
                for c in self.columns]
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)})"

    def encode(self, record) -> tuple:
        return tuple(self.value(c, getattr(record, c)) for c in self.columns)

    def value(self, column: str, value):
        kind = self.kinds[column]
        if kind == "time":
            return to_ms(value)
        if kind == "json":
            return json.dumps(value, default=_json_default, separators=(",", ":"))
        if kind == "bool":
            return None if value is None else int(bool(value))
        return getattr(value, "value", value)  # enums as their value

    def decode(self, row):
        if row is None:
            return None
        values = list(row)
        for index, convert in self.decoders:  # only the columns that need it (exports read 100ks)
            if values[index] is not None:
                values[index] = convert(values[index])
        if self.cls is DeliveryRecord:
            attempts = self.columns.index("attempts")
            values[attempts] = [_attempt(a) for a in values[attempts] or []]
        return self.cls(*values)


_scan_json = make_scanner(json.JSONDecoder())


def _json_loads(text: str):
    """json.loads of the text this module writes (compact, no surrounding space), through the
    C scanner directly: json.loads's own Python steps were most of an export's decoding."""
    if text == "[]":
        return []
    if text == "{}":
        return {}
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:  # leading space: not ours, read the ordinary way
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _to_bool(value) -> bool:
    return bool(value)


_DECODERS = {"time": from_ms, "json": _json_loads, "bool": _to_bool}


def _kind(field) -> str:
    text = str(field.type)
    if "datetime" in text:
        return "time"
    if text.startswith(("list", "dict")):
        return "json"
    if text.startswith("bool"):
        return "bool"
    return "value"


def _json_default(value):
    if isinstance(value, datetime):
        return {"$ms": to_ms(value)}
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _attempt(data: dict) -> AttemptRecord:
    for name in ("at", "next_attempt_at"):
        if isinstance(data.get(name), dict):
            data[name] = from_ms(data[name]["$ms"])
    return AttemptRecord(**data)


BATCHES = Table("batches", BatchRecord)
PRODUCTS = Table("products", ProductRecord)
IMAGES = Table("images", ImageRecord)
SUBSCRIPTIONS = Table("subscriptions", SubscriptionRecord)
DELIVERIES = Table("deliveries", DeliveryRecord)
IDEMPOTENCY = Table("idempotency_keys", IdempotencyRecord)
SOURCES = Table("sources", SourceRecord)  # read and written by its primary key only
TABLES = (BATCHES, PRODUCTS, IMAGES, SUBSCRIPTIONS, DELIVERIES, IDEMPOTENCY, SOURCES)

INDEXES = (
    "CREATE INDEX IF NOT EXISTS batches_owner_created ON batches (owner, created_at, id)",
    "CREATE INDEX IF NOT EXISTS batches_owner_status_created"
    " ON batches (owner, status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS batches_status_updated ON batches (status, updated_at)",
    "CREATE UNIQUE INDEX IF NOT EXISTS products_batch_line ON products (batch_id, line)",
    "CREATE INDEX IF NOT EXISTS products_batch_status_line ON products (batch_id, status, line)",
    "CREATE INDEX IF NOT EXISTS images_batch_chunk_status ON images (batch_id, chunk, status)",
    "CREATE INDEX IF NOT EXISTS products_batch_serial ON products (batch_id, serial_no)",
    "CREATE INDEX IF NOT EXISTS images_batch_status_chunk ON images (batch_id, status, chunk)",
    "CREATE INDEX IF NOT EXISTS deliveries_batch_created ON deliveries (batch_id, created_at)",
    "CREATE INDEX IF NOT EXISTS deliveries_status_next ON deliveries (status, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS subscriptions_owner_created"
    " ON subscriptions (owner, created_at)",
    "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency_keys (created_at)",
)


# A block's S. No.s as one JSON array (one parameter, however big the block). The unary `+`
# keeps status and line off the index choice: without it SQLite scans (batch_id, status, line)
# over every earlier row of the batch instead of looking each S. No. up.
SERIALS_TAKEN = ("SELECT serial_no, line FROM products WHERE batch_id = ? AND serial_no IN "
                 "(SELECT value FROM json_each(?)) AND +status = ? AND +line < ?")


class Database:
    """The SQLite file: one connection per process and thread, made on first use."""

    def __init__(self, path: str):
        self.path = path
        # Per thread, and anew in a forked child: the parent's connections are not ours.
        self._local = per_process(threading.local)

    def conn(self) -> sqlite3.Connection:
        local = self._local()
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # Durable against a crashed process; a power cut may lose the last transactions.
            conn.execute("PRAGMA synchronous = NORMAL")
            local.conn = conn
        return conn

    def one(self, sql: str, params=()):
        return first(self.conn().execute(sql, params))

    def all(self, sql: str, params=()) -> list:
        return self.conn().execute(sql, params).fetchall()

    def run(self, sql: str, params=()) -> int:
        """One statement (atomic on its own); returns how many rows it changed."""
        return self.conn().execute(sql, params).rowcount

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE: the write lock is taken first, so what is read stays true."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def first(cursor: sqlite3.Cursor):
    """The first row, reading the statement to its end: an UPDATE ... RETURNING (or a read)
    left half-read would keep its transaction, and the write lock, open."""
    rows = cursor.fetchall()
    return rows[0] if rows else None


def _placeholders(values) -> str:
    return ", ".join("?" * len(values))


def _returning(table: Table) -> str:
    return " RETURNING " + ", ".join(table.columns)


class SqliteBatchStore(BatchStore):
    def __init__(self, database: Database):
        self.db = database

    def _update(self, sets: str, where: str, params) -> BatchRecord | None:
        """One conditional UPDATE; the batch after it, or None when nothing matched."""
        row = self.db.one(f"UPDATE batches SET {sets} WHERE {where}{_returning(BATCHES)}", params)
        return BATCHES.decode(row)

    def create(self, batch):
        self.db.run(BATCHES.insert, BATCHES.encode(batch))
        return batch

    def get(self, batch_id, owner=None, *, any_owner=False):
        if any_owner:
            return BATCHES.decode(self.db.one(BATCHES.select + " WHERE id = ?", (batch_id,)))
        return BATCHES.decode(self.db.one(BATCHES.select + " WHERE id = ? AND owner IS ?",
                                          (batch_id, owner)))

    def delete(self, batch_id):
        self.db.run("DELETE FROM batches WHERE id = ?", (batch_id,))

    def status_of(self, batch_id):
        row = self.db.one("SELECT status FROM batches WHERE id = ?", (batch_id,))
        return BatchStatus(row[0]) if row else None

    def start(self, batch_id):
        stamp = to_ms(now())
        self.db.run("UPDATE batches SET status = ?, started_at = ?, updated_at = ? "
                    "WHERE id = ? AND status = ?",
                    (BatchStatus.PROCESSING.value, stamp, stamp, batch_id,
                     BatchStatus.QUEUED.value))
        return BATCHES.decode(self.db.one(BATCHES.select + " WHERE id = ? AND status = ?",
                                          (batch_id, BatchStatus.PROCESSING.value)))

    def record_flush(self, batch_id, flush, *, rows_total, rows_valid, rows_invalid,
                     images_total, chunks, images_processed=0, images_failed=0,
                     images_reused=0):
        return self.db.run(
            "UPDATE batches SET rows_total = rows_total + ?, rows_valid = rows_valid + ?, "
            "rows_invalid = rows_invalid + ?, images_total = images_total + ?, "
            "chunks = chunks + ?, images_processed = images_processed + ?, "
            "images_failed = images_failed + ?, "
            "images_reused = COALESCE(images_reused, 0) + ?, flushed = ?, updated_at = ? "
            "WHERE id = ? AND (flushed IS NULL OR flushed < ?)",
            (rows_total, rows_valid, rows_invalid, images_total, chunks, images_processed,
             images_failed, images_reused, flush, to_ms(now()), batch_id, flush)) == 1

    def record_dialect(self, batch_id, dialect):
        self.db.run("UPDATE batches SET csv_delimiter = ?, csv_bom = ? WHERE id = ?",
                    (dialect.delimiter, int(dialect.bom), batch_id))

    def finish_reading(self, batch_id, *, header):
        self.db.run("UPDATE batches SET header = ?, parsed = 1, updated_at = ? WHERE id = ?",
                    (json.dumps(header), to_ms(now()), batch_id))

    def add_image_results(self, batch_id, processed=0, failed=0, bytes_in=0, bytes_out=0,
                          reused=0):
        self.db.run("UPDATE batches SET images_processed = images_processed + ?, "
                    "images_failed = images_failed + ?, "
                    "images_reused = COALESCE(images_reused, 0) + ?, "
                    "bytes_in = COALESCE(bytes_in, 0) + ?, "
                    "bytes_out = COALESCE(bytes_out, 0) + ?, updated_at = ? WHERE id = ?",
                    (processed, failed, reused, bytes_in, bytes_out, to_ms(now()), batch_id))

    def try_finish(self, batch_id):
        with self.db.transaction() as conn:
            batch = BATCHES.decode(first(conn.execute(BATCHES.select + " WHERE id = ?",
                                                (batch_id,))))
            if batch is None or not batch.ready_to_finish:
                return None
            status, error = batch.outcome()
            stamp = to_ms(now())
            row = first(conn.execute(
                "UPDATE batches SET status = ?, finished_at = ?, updated_at = ?, error = ?, "
                "finish_seq = finish_seq + 1 WHERE id = ? AND status = ?" + _returning(BATCHES),
                (status.value, stamp, stamp, error, batch_id,
                 BatchStatus.PROCESSING.value)))
        return BATCHES.decode(row)

    def fail(self, batch_id, error, *, unparsed_only=False):
        stamp = to_ms(now())
        where = f"id = ? AND status IN ({_placeholders(_ACTIVE)})"
        if unparsed_only:
            where += " AND parsed = 0"
        return self._update("status = ?, error = ?, finished_at = ?, updated_at = ?, "
                            "finish_seq = finish_seq + 1", where,
                            (BatchStatus.FAILED.value, error, stamp, stamp, batch_id, *_ACTIVE))

    def list_page(self, owner, *, limit, after, status, created_after, created_before):
        where, params = ["owner IS ?"], [owner]
        if status:
            where.append("status = ?")
            params.append(status)
        # Compared as (fractional) milliseconds: a bound between two stored ms stays exact.
        if created_after:
            where.append("created_at > ?")
            params.append((created_after - EPOCH) / MS)
        if created_before:
            where.append("created_at < ?")
            params.append((created_before - EPOCH) / MS)
        if after:
            at, last_id = after
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [(at - EPOCH) / MS, (at - EPOCH) / MS, last_id]
        rows = self.db.all(f"{BATCHES.select} WHERE {' AND '.join(where)} "
                           "ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit))
        return [BATCHES.decode(r) for r in rows]

    def cancel(self, batch_id):
        stamp = to_ms(now())
        return self._update("status = ?, finished_at = ?, updated_at = ?, cancelled_at = ?, "
                            "finish_seq = finish_seq + 1",
                            f"id = ? AND status IN ({_placeholders(_ACTIVE)})",
                            (BatchStatus.CANCELLED.value, stamp, stamp, stamp, batch_id,
                             *_ACTIVE))

    def start_retry(self, batch, failed_slots):
        stamp = to_ms(now())
        return self._update(
            "status = ?, finished_at = NULL, error = NULL, updated_at = ?, retried_at = ?, "
            "images_failed = images_failed - ?, retries = retries + 1",
            f"id = ? AND status IN ({_placeholders(_RETRYABLE)}) AND finish_seq = ? "
            "AND images_failed >= ?",
            (BatchStatus.PROCESSING.value, stamp, stamp, failed_slots, batch.id, *_RETRYABLE,
             batch.finish_seq, failed_slots))

    def stalled(self, before, limit=1000):
        rows = self.db.all(f"{BATCHES.select} WHERE status IN ({_placeholders(_ACTIVE)}) "
                           "AND updated_at < ? ORDER BY updated_at LIMIT ?",
                           (*_ACTIVE, (before - EPOCH) / MS, limit))
        return [BATCHES.decode(r) for r in rows]

    def claim_stalled(self, batch):
        stamp = to_ms(batch.sweep_stamp())
        sweeps, progress = batch.next_sweep()
        return self._update("updated_at = ?, swept_at = ?, sweeps = ?, swept_progress = ?",
                            "id = ? AND status = ? AND updated_at = ?",
                            (stamp, stamp, sweeps, json.dumps(progress), batch.id,
                             batch.status.value, to_ms(batch.updated_at)))

    def set_image_counts(self, batch_id, *, processed, failed, reused=0):
        self.db.run("UPDATE batches SET images_processed = ?, images_failed = ?, "
                    "images_reused = ?, updated_at = ? WHERE id = ? AND status = ?",
                    (processed, failed, reused, to_ms(now()), batch_id,
                     BatchStatus.PROCESSING.value))


class SqliteProductStore(ProductStore):
    def __init__(self, database: Database):
        self.db = database

    def write_rows(self, rows):
        if rows:
            with self.db.transaction() as conn:
                conn.executemany(PRODUCTS.insert.replace("INSERT", "INSERT OR REPLACE", 1),
                                 [PRODUCTS.encode(r) for r in rows])

    def add_images(self, batch_id, flush, images):
        added = ImagesAdded()
        if not images:
            return added
        ids = [image.id for image in images]
        # One transaction for the whole block: it is added entirely or not at all.
        with self.db.transaction() as conn:
            existing: set[str] = set()
            for start in range(0, len(ids), IN_CHUNK):
                part = ids[start:start + IN_CHUNK]
                existing.update(r[0] for r in conn.execute(
                    f"SELECT id FROM images WHERE id IN ({_placeholders(part)})", part))
            new = [replace(_fresh(batch_id, image), last_flush=flush)
                   for image in images if image.id not in existing]
            conn.executemany(IMAGES.insert, [IMAGES.encode(image) for image in new])
            added.created = [image.id for image in new]
            for image in images:
                if image.id not in existing:
                    continue
                row = first(conn.execute(
                    "UPDATE images SET occurrences = occurrences + ?, last_flush = ? "
                    "WHERE id = ? AND COALESCE(last_flush, 0) < ? "
                    "RETURNING status, COALESCE(reused, 0)",
                    (image.occurrences, flush, image.id, flush)))
                if row is None:
                    added.seen_before = True
                elif row[0] == PROCESSED:
                    added.late_processed += image.occurrences
                    added.late_reused += image.occurrences if row[1] else 0
                elif row[0] == FAILED:
                    added.late_failed += image.occurrences
        return added

    def serials_taken(self, batch_id, serial_nos, before_line):
        if not serial_nos:
            return {}
        rows = self.db.all(SERIALS_TAKEN, (batch_id, json.dumps(list(serial_nos)), ACCEPTED,
                                           before_line))
        return dict(rows)

    def pending_images(self, batch_id, chunk):
        rows = self.db.all(IMAGES.select + " WHERE batch_id = ? AND chunk = ? AND status = ?",
                           (batch_id, chunk, PENDING))
        return [IMAGES.decode(r) for r in rows]

    def pending_chunks(self, batch_id):
        rows = self.db.all("SELECT DISTINCT chunk FROM images WHERE batch_id = ? AND status = ? "
                           "ORDER BY chunk", (batch_id, PENDING))
        return [r[0] for r in rows]

    def mark_processed(self, image, *, key, output_url, bytes_in, bytes_out, content_type,
                       kept_original=False, width=None, height=None, format=None,
                       output_format=None, sizes=None, reused=False):
        row = self.db.one(
            "UPDATE images SET status = ?, output_key = ?, output_url = ?, bytes_in = ?, "
            "bytes_out = ?, content_type = ?, kept_original = ?, reused = ?, width = ?, "
            "height = ?, format = ?, output_format = ?, sizes = ?, error = NULL, "
            "error_code = NULL WHERE id = ? AND status = ? RETURNING occurrences",
            (PROCESSED, key, output_url, bytes_in, bytes_out, content_type, int(kept_original),
             int(reused), width, height, format, output_format,
             IMAGES.value("sizes", dict(sizes or {})), image.id, PENDING))
        return row[0] if row else 0

    def mark_failed(self, image, error, code, bytes_in=None):
        row = self.db.one("UPDATE images SET status = ?, error = ?, error_code = ?, bytes_in = ? "
                          "WHERE id = ? AND status = ? RETURNING occurrences",
                          (FAILED, error, str(code), bytes_in, image.id, PENDING))
        return row[0] if row else 0

    def start_attempt(self, image):
        row = self.db.one("UPDATE images SET attempts = attempts + 1 WHERE id = ? AND status = ? "
                          "RETURNING attempts", (image.id, PENDING))
        if row is None:
            return None
        image.attempts = row[0]
        return image

    def start_attempts(self, ids):
        counted: set[str] = set()
        with self.db.transaction() as conn:
            for start in range(0, len(ids), IN_CHUNK):
                part = ids[start:start + IN_CHUNK]
                counted.update(r[0] for r in conn.execute(
                    "UPDATE images SET attempts = attempts + 1 WHERE status = ? AND "
                    f"id IN ({_placeholders(part)}) RETURNING id", (PENDING, *part)))
        return counted

    def undo_attempts(self, ids):
        for start in range(0, len(ids), IN_CHUNK):
            part = ids[start:start + IN_CHUNK]
            self.db.run("UPDATE images SET attempts = attempts - 1 WHERE status = ? AND "
                        f"attempts > 0 AND id IN ({_placeholders(part)})", (PENDING, *part))

    def any_pending(self, batch_id):
        return self.db.one("SELECT 1 FROM images WHERE batch_id = ? AND status = ? LIMIT 1",
                           (batch_id, PENDING)) is not None

    def fail_pending(self, batch_id, error, code):
        return self.db.run("UPDATE images SET status = ?, error = ?, error_code = ? "
                           "WHERE batch_id = ? AND status = ?",
                           (FAILED, error, str(code), batch_id, PENDING))

    def images_for(self, batch_id, hashes):
        ids = [image_id(batch_id, h) for h in set(hashes)]
        found: dict[str, ImageRecord] = {}
        for start in range(0, len(ids), IN_CHUNK):
            part = ids[start:start + IN_CHUNK]
            for row in self.db.all(f"{IMAGES.select} WHERE id IN ({_placeholders(part)})", part):
                image = IMAGES.decode(row)
                found[image.hash] = image
        return found

    def image_outcomes(self, batch_id, hashes):
        ids = [image_id(batch_id, h) for h in set(hashes)]
        found: dict[str, ImageOutcome] = {}
        for start in range(0, len(ids), IN_CHUNK):
            part = ids[start:start + IN_CHUNK]
            for digest, status, output_url, output_key, sizes, error, code in self.db.all(
                    "SELECT hash, status, output_url, output_key, sizes, error, error_code "
                    f"FROM images WHERE id IN ({_placeholders(part)})", part):
                found[digest] = ImageOutcome(digest, status, output_url, output_key,
                                             _json_loads(sizes) if sizes else {}, error, code)
        return found

    def rows_after(self, batch_id, *, after_line, limit, status=None):
        where, params = "batch_id = ? AND line > ?", [batch_id, after_line]
        if status:
            where += " AND status = ?"
            params.append(status)
        rows = self.db.all(f"{PRODUCTS.select} WHERE {where} ORDER BY line LIMIT ?",
                           (*params, limit))
        return [PRODUCTS.decode(r) for r in rows]

    def failed_images(self, batch_id):
        rows = self.db.all(IMAGES.select + " WHERE batch_id = ? AND status = ?", (batch_id, FAILED))
        return [IMAGES.decode(r) for r in rows]

    def reset_images(self, ids):
        changed = 0
        for start in range(0, len(ids), IN_CHUNK):
            part = ids[start:start + IN_CHUNK]
            changed += self.db.run(
                f"UPDATE images SET status = ?, error = NULL, error_code = NULL, attempts = 0 "
                f"WHERE status = ? AND id IN ({_placeholders(part)})", (PENDING, FAILED, *part))
        return changed

    def count_slots(self, batch_id):
        rows = self.db.all("SELECT status, COALESCE(reused, 0), SUM(occurrences) FROM images "
                           "WHERE batch_id = ? GROUP BY status, COALESCE(reused, 0)", (batch_id,))
        counts: dict[str, int] = {}
        for status, reused, total in rows:
            counts[status] = counts.get(status, 0) + total
            if status == PROCESSED and reused:
                counts["reused"] = counts.get("reused", 0) + total
        return counts


def _fresh(batch_id: str, image: ImageRecord) -> ImageRecord:
    """The image as a new row is inserted: pending, nothing done yet."""
    return ImageRecord(id=image_id(batch_id, image.hash), batch_id=batch_id, url=image.url,
                       hash=image.hash, occurrences=image.occurrences, chunk=image.chunk)


class SqliteWebhookStore(WebhookStore):
    def __init__(self, database: Database):
        self.db = database

    def create_subscription(self, subscription):
        self.db.run(SUBSCRIPTIONS.insert, SUBSCRIPTIONS.encode(subscription))
        return subscription

    def count_subscriptions(self, owner):
        return self.db.one("SELECT COUNT(*) FROM subscriptions WHERE owner IS ?", (owner,))[0]

    def list_subscriptions(self, owner):
        rows = self.db.all(SUBSCRIPTIONS.select + " WHERE owner IS ? ORDER BY created_at, id",
                           (owner,))
        return [SUBSCRIPTIONS.decode(r) for r in rows]

    def get_subscription(self, subscription_id, owner=None, *, any_owner=False):
        if any_owner:
            row = self.db.one(SUBSCRIPTIONS.select + " WHERE id = ?", (subscription_id,))
        else:
            row = self.db.one(SUBSCRIPTIONS.select + " WHERE id = ? AND owner IS ?",
                              (subscription_id, owner))
        return SUBSCRIPTIONS.decode(row)

    def update_subscription(self, subscription_id, owner, changes):
        current = self.get_subscription(subscription_id, owner)
        if current is None:
            return None
        changes = current.changed(changes)
        unknown = set(changes) - set(SUBSCRIPTIONS.columns)
        if unknown:
            raise ValueError(f"not subscription fields: {', '.join(sorted(unknown))}")
        sets = ", ".join(f"{name} = ?" for name in changes)
        values = [SUBSCRIPTIONS.value(name, value) for name, value in changes.items()]
        row = self.db.one(f"UPDATE subscriptions SET {sets} WHERE id = ? AND owner IS ?"
                          + _returning(SUBSCRIPTIONS), (*values, subscription_id, owner))
        return SUBSCRIPTIONS.decode(row)

    def delete_subscription(self, subscription_id, owner):
        return self.db.run("DELETE FROM subscriptions WHERE id = ? AND owner IS ?",
                           (subscription_id, owner)) == 1

    def rotate_secret(self, subscription_id, owner):
        current = self.get_subscription(subscription_id, owner)
        if current is None:
            return None
        new = current.rotated()
        row = self.db.one(
            "UPDATE subscriptions SET secret = ?, previous_secret = ?, "
            "previous_secret_expires_at = ?, updated_at = ? "
            "WHERE id = ? AND owner IS ? AND secret = ?" + _returning(SUBSCRIPTIONS),
            (new.secret, new.previous_secret, to_ms(new.previous_secret_expires_at),
             to_ms(new.updated_at), subscription_id, owner, current.secret))
        return SUBSCRIPTIONS.decode(row)

    def disable_subscription(self, subscription_id, reason):
        stamp = to_ms(now())
        self.db.run("UPDATE subscriptions SET enabled = 0, disabled_reason = ?, disabled_at = ?, "
                    "updated_at = ? WHERE id = ?", (reason, stamp, stamp, subscription_id))

    def subscribers_for(self, owner, event):
        # At most MAX_SUBSCRIPTIONS_PER_OWNER of them: the event is picked out here.
        rows = self.db.all(SUBSCRIPTIONS.select + " WHERE owner IS ? AND enabled = 1 "
                           "ORDER BY created_at, id", (owner,))
        return [s for s in map(SUBSCRIPTIONS.decode, rows) if event in s.events]

    def insert_delivery(self, delivery):
        try:
            self.db.run(DELIVERIES.insert, DELIVERIES.encode(delivery))
        except sqlite3.IntegrityError:
            return False
        return True

    def get_delivery(self, delivery_id, owner=None, *, any_owner=False):
        if any_owner:
            row = self.db.one(DELIVERIES.select + " WHERE id = ?", (delivery_id,))
        else:
            row = self.db.one(DELIVERIES.select + " WHERE id = ? AND owner IS ?",
                              (delivery_id, owner))
        return DELIVERIES.decode(row)

    def list_deliveries(self, batch_id):
        rows = self.db.all(DELIVERIES.select + " WHERE batch_id = ? ORDER BY created_at, id",
                           (batch_id,))
        return [DELIVERIES.decode(r) for r in rows]

    def claim_attempt(self, delivery_id, number, lease_until):
        row = self.db.one(
            "UPDATE deliveries SET lease_until = ? WHERE id = ? AND status = ? AND "
            "next_attempt_no = ? AND (lease_until IS NULL OR lease_until < ?)"
            + _returning(DELIVERIES),
            (to_ms(lease_until), delivery_id, PENDING, number, to_ms(now())))
        return DELIVERIES.decode(row)

    def _append(self, conn, delivery_id: str, where: str, params, attempt: AttemptRecord,
                sets: dict) -> None:
        row = first(conn.execute(f"SELECT attempts FROM deliveries WHERE id = ?{where}",
                           (delivery_id, *params)))
        if row is None:
            return
        attempts = json.loads(row[0] or "[]") + [json.loads(
            json.dumps(attempt, default=_json_default))]
        sets = {**sets, "attempts": json.dumps(attempts, separators=(",", ":"))}
        assignments = ", ".join(f"{name} = ?" for name in sets)
        conn.execute(f"UPDATE deliveries SET {assignments}, attempt_count = attempt_count + 1 "
                     "WHERE id = ?", (*sets.values(), delivery_id))

    def record_attempt(self, delivery_id, number, attempt, *, status, next_attempt_at):
        with self.db.transaction() as conn:
            self._append(conn, delivery_id, " AND next_attempt_no = ?", (number,), attempt, {
                "status": status, "next_attempt_no": number + 1,
                "next_attempt_at": to_ms(next_attempt_at), "lease_until": None,
                "last_status_code": attempt.status_code, "last_error": attempt.error,
                "updated_at": to_ms(now())})

    def record_manual_attempt(self, delivery_id, attempt, *, succeeded):
        sets: dict = {"last_status_code": attempt.status_code, "last_error": attempt.error,
                      "updated_at": to_ms(now())}
        if succeeded:
            sets.update(status=SUCCEEDED, next_attempt_at=None, lease_until=None)
        with self.db.transaction() as conn:
            self._append(conn, delivery_id, "", (), attempt, sets)

    def overdue(self, grace, limit=1000):
        stamp = now()
        rows = self.db.all(
            DELIVERIES.select + " WHERE status = ? AND next_attempt_at < ? "
            "AND (lease_until IS NULL OR lease_until < ?) LIMIT ?",
            (PENDING, to_ms(stamp - grace), to_ms(stamp), limit))
        return [DELIVERIES.decode(r) for r in rows]


class SqliteIdempotencyStore(IdempotencyStore):
    def __init__(self, database: Database):
        self.db = database

    def find(self, owner, key):
        return IDEMPOTENCY.decode(self.db.one(
            IDEMPOTENCY.select + " WHERE id = ? AND created_at > ?",
            (idempotency_id(owner, key), to_ms(now() - self.TTL))))

    def claim(self, record):
        with self.db.transaction() as conn:
            # A key older than the TTL is forgotten (MongoDB's TTL index does the same).
            conn.execute("DELETE FROM idempotency_keys WHERE created_at <= ?",
                         (to_ms(now() - self.TTL),))
            try:
                conn.execute(IDEMPOTENCY.insert, IDEMPOTENCY.encode(record))
            except sqlite3.IntegrityError:
                return None
        return record

    def release(self, owner, key, batch_id):
        self.db.run("DELETE FROM idempotency_keys WHERE id = ? AND batch_id = ?",
                    (idempotency_id(owner, key), batch_id))


class SqliteSourceStore(SourceStore):
    def __init__(self, database: Database):
        self.db = database

    def find(self, owner, fingerprint, urls):
        lookup = SourceLookup(owner, fingerprint, urls)
        found: dict[str, SourceRecord] = {}
        for start in range(0, len(lookup.ids), IN_CHUNK):
            part = lookup.ids[start:start + IN_CHUNK]
            found.update(lookup.found(SOURCES.decode(row) for row in self.db.all(
                f"{SOURCES.select} WHERE id IN ({_placeholders(part)})", part)))
        return found

    def remember(self, records):
        if records:
            with self.db.transaction() as conn:
                conn.executemany(SOURCES.insert.replace("INSERT", "INSERT OR REPLACE", 1),
                                 [SOURCES.encode(record) for record in records])


class SqliteStores(Stores):
    name = "sqlite"

    def __init__(self, path: str):
        self.path = path
        self.database = Database(path)
        self.batches = SqliteBatchStore(self.database)
        self.products = SqliteProductStore(self.database)
        self.webhooks = SqliteWebhookStore(self.database)
        self.idempotency = SqliteIdempotencyStore(self.database)
        self.sources = SqliteSourceStore(self.database)

    def prepare(self) -> None:
        with self.database.transaction() as conn:
            for table in TABLES:
                conn.execute(table.create_sql())
                # A file made by an older version lacks the columns of fields added since.
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")}
                for column in table.columns:
                    if column not in present:
                        conn.execute(f"ALTER TABLE {table.name} "
                                     f"ADD COLUMN {table.column_sql(column)}")
            for index in INDEXES:
                conn.execute(index)

    def ping(self) -> None:
        self.database.one("SELECT 1")
