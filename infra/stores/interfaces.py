"""What each store does, one interface per concern; MongoDB and SQLite implement them alike.

Exactly-once rests on these methods being atomic conditional updates: a state change (an image
pending -> processed, a batch processing -> finished, an attempt claimed) returns True or the
record only to the one caller that made it, whatever other processes do at the same time.
"""
from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from schemas.batch import BatchStatus
from schemas.csv_format import Dialect
from schemas.records import (AttemptRecord, BatchRecord, DeliveryRecord, IdempotencyRecord,
                             ImageOutcome, ImageRecord, ImagesAdded, ProductRecord, SourceRecord,
                             SubscriptionRecord)


class BatchStore(abc.ABC):
    """Batch records: create, read, page through, count atomically, finish exactly once."""

    @abc.abstractmethod
    def create(self, batch: BatchRecord) -> BatchRecord: ...

    @abc.abstractmethod
    def get(self, batch_id: str, owner: str | None = None, *,
            any_owner: bool = False) -> BatchRecord | None: ...

    @abc.abstractmethod
    def delete(self, batch_id: str) -> None: ...

    @abc.abstractmethod
    def status_of(self, batch_id: str) -> BatchStatus | None: ...

    @abc.abstractmethod
    def start(self, batch_id: str) -> BatchRecord | None:
        """queued -> processing (no-op when already processing); None when it must not run."""

    @abc.abstractmethod
    def record_flush(self, batch_id: str, flush: int, *, rows_total: int, rows_valid: int,
                     rows_invalid: int, images_total: int, chunks: int,
                     images_processed: int = 0, images_failed: int = 0,
                     images_reused: int = 0) -> bool:
        """Add the counts of block `flush` (1, 2, …) of the file's rows to the batch's, once:
        only while the batch's `flushed` watermark is below `flush`, which it then becomes.
        True when this call added them (False: a previous run of the parse did)."""

    @abc.abstractmethod
    def record_dialect(self, batch_id: str, dialect: Dialect) -> None:
        """Keep the input file's dialect (delimiter, BOM), read with its header."""

    @abc.abstractmethod
    def finish_reading(self, batch_id: str, *, header: list[str]) -> None:
        """The whole file has been read: `parsed` (rows.done_reading) and its header."""

    @abc.abstractmethod
    def add_image_results(self, batch_id: str, processed: int = 0, failed: int = 0,
                          bytes_in: int = 0, bytes_out: int = 0, reused: int = 0) -> None:
        """Atomically add finished image slots (`reused`: of the processed ones, those whose
        outputs were reused) and a processed image's bytes (and mark progress for the stall
        sweeper)."""

    @abc.abstractmethod
    def try_finish(self, batch_id: str) -> BatchRecord | None:
        """Finish the batch when every image is done; returns it only to the one caller that did."""

    @abc.abstractmethod
    def fail(self, batch_id: str, error: str, *, unparsed_only: bool = False) -> BatchRecord | None:
        """End a batch whose file itself broke; only from queued or processing (and, with
        `unparsed_only`, only while its file has not been read)."""

    @abc.abstractmethod
    def list_page(self, owner: str | None, *, limit: int, after: tuple[datetime, str] | None,
                  status: str | None, created_after: datetime | None,
                  created_before: datetime | None) -> list[BatchRecord]:
        """At most `limit` batches of `owner`, newest first (created_at, then id), strictly
        after the position `after` (the created_at and id of the previous page's last one)."""

    @abc.abstractmethod
    def cancel(self, batch_id: str) -> BatchRecord | None:
        """queued/processing -> cancelled, exactly once; the batch only to the caller that did."""

    @abc.abstractmethod
    def start_retry(self, batch: BatchRecord, failed_slots: int) -> BatchRecord | None:
        """A finished batch back to processing, its failed count lowered by `failed_slots`.

        Conditional on the status and finish_seq read by the caller, so of two concurrent
        retries only one wins (the other gets None). `retries` counts the runs."""

    @abc.abstractmethod
    def stalled(self, before: datetime, limit: int = 1000) -> list[BatchRecord]:
        """Active batches whose last recorded progress (updated_at) is older than `before`."""

    @abc.abstractmethod
    def claim_stalled(self, batch: BatchRecord) -> BatchRecord | None:
        """Mark a stalled batch as swept now, only if nothing touched it since it was read.

        Bumping updated_at restarts its stall clock, so the same batch is not re-enqueued by
        every sweep while its recovered work waits in the queue (see BatchRecord.next_sweep)."""

    @abc.abstractmethod
    def set_image_counts(self, batch_id: str, *, processed: int, failed: int,
                         reused: int = 0) -> None:
        """Overwrite a processing batch's image counters with values re-derived from its images."""


class ProductStore(abc.ABC):
    """Product rows and their images: bulk writes, state changes, pages and joins."""

    @abc.abstractmethod
    def write_rows(self, rows: list[ProductRecord]) -> None:
        """Upsert rows by their id (a re-run parse writes the same rows)."""

    @abc.abstractmethod
    def add_images(self, batch_id: str, flush: int, images: list[ImageRecord]) -> ImagesAdded:
        """Add block `flush`'s uses of each URL (`occurrences` of each record: its uses within
        the block) to the batch's images, exactly once per image and block.

        A URL not yet stored becomes a pending image in the record's `chunk`, with its
        `last_flush` at `flush`. One already stored has its occurrences raised only while its
        `last_flush` is below `flush` (then set to it), so a re-run parse adds nothing twice; if
        it is already processed or failed, the uses added count as done (`late_processed`,
        `late_failed`, and `late_reused` for a processed image that was reused), read
        atomically with the change, so a chunk job finishing it at the same moment never counts
        them too."""

    @abc.abstractmethod
    def serials_taken(self, batch_id: str, serial_nos: list[int],
                      before_line: int) -> dict[int, int]:
        """Which of these S. No.s an accepted row of the batch at a line before `before_line`
        already has, each with that row's line (for a duplicate's message): one indexed query
        for a block of rows.

        Rows at `before_line` and after are not looked at: a re-run parse would find there its
        block's own rows stored by the run before, and a row is never a duplicate of itself."""

    @abc.abstractmethod
    def pending_images(self, batch_id: str, chunk: int) -> list[ImageRecord]: ...

    @abc.abstractmethod
    def pending_chunks(self, batch_id: str) -> list[int]:
        """The chunk numbers that still hold pending images, in order."""

    @abc.abstractmethod
    def mark_processed(self, image: ImageRecord, *, key: str, output_url: str, bytes_in: int,
                       bytes_out: int, content_type: str, kept_original: bool = False,
                       width: int | None = None, height: int | None = None,
                       format: str | None = None, output_format: str | None = None,
                       sizes: dict[str, str] | None = None, reused: bool = False) -> int:
        """pending -> processed, with what it is (`reused`: its outputs copied from an earlier
        batch's); the image's occurrences as of the change (the
        slots it finishes, read atomically with it: the parse may still be adding uses), or 0
        for a call that did not make the change."""

    @abc.abstractmethod
    def mark_failed(self, image: ImageRecord, error: str, code: str,
                    bytes_in: int | None = None) -> int:
        """pending -> failed with a message and its FailureCode; the slots it fails, as
        mark_processed, or 0."""

    @abc.abstractmethod
    def start_attempt(self, image: ImageRecord) -> ImageRecord | None:
        """Count one more attempt at a pending image as a worker starts on it; the image after
        the change, or None when it is no longer pending (done by another run)."""

    @abc.abstractmethod
    def start_attempts(self, ids: list[str]) -> set[str]:
        """start_attempt for many images in one update (a chunk run's fresh images as it
        starts): the ids of those still pending, whose attempt this call counted."""

    @abc.abstractmethod
    def undo_attempts(self, ids: list[str]) -> None:
        """Take back the attempt counted for each of these images still pending, whose run
        stopped for a reason that is not the image's (S3 unreachable, the host asked to wait,
        a cancel): only worker deaths on an image count toward its limit."""

    def undo_attempt(self, image: ImageRecord) -> None:
        """undo_attempts for one image."""
        self.undo_attempts([image.id])

    @abc.abstractmethod
    def any_pending(self, batch_id: str) -> bool:
        """Whether some image of the batch is still pending (one indexed read)."""

    @abc.abstractmethod
    def fail_pending(self, batch_id: str, error: str, code: str) -> int:
        """pending -> failed (message and FailureCode) for every pending image of a batch;
        returns how many."""

    @abc.abstractmethod
    def images_for(self, batch_id: str, hashes: Iterable[str]) -> dict[str, ImageRecord]:
        """The batch's images with these URL hashes, by hash."""

    @abc.abstractmethod
    def image_outcomes(self, batch_id: str, hashes: Iterable[str]) -> dict[str, ImageOutcome]:
        """The state and outputs of the batch's images with these URL hashes, by hash: only
        the fields an export shows are read (an export reads every image of its batch)."""

    @abc.abstractmethod
    def rows_after(self, batch_id: str, *, after_line: int, limit: int,
                   status: str | None = None) -> list[ProductRecord]:
        """Up to `limit` rows with a line above `after_line`, in line order."""

    @abc.abstractmethod
    def failed_images(self, batch_id: str) -> list[ImageRecord]: ...

    @abc.abstractmethod
    def reset_images(self, ids: list[str]) -> int:
        """failed -> pending (attempts back to 0) for exactly these images; how many changed."""

    @abc.abstractmethod
    def count_slots(self, batch_id: str) -> dict[str, int]:
        """Image slots (occurrences) per image status, re-derived from the images; under
        "reused", the processed slots whose outputs were reused."""

    # Built on the methods above, the same for every implementation.

    def iter_rows(self, batch_id: str, *, status: str | None = None, after_line: int = 0,
                  block: int = 1000
                  ) -> Iterator[tuple[ProductRecord, dict[str, ImageOutcome]]]:
        """Every row in line order with the state and outputs of the images it refers to, read
        block by block (the exports)."""
        while True:
            rows = self.rows_after(batch_id, after_line=after_line, limit=block, status=status)
            if not rows:
                return
            images = self.image_outcomes(batch_id, (h for r in rows for h in r.image_hashes))
            for row in rows:
                yield row, images
            after_line = rows[-1].line
            if len(rows) < block:
                return

    def page_products(self, batch_id: str, *, after_line: int, limit: int
                      ) -> tuple[list[tuple[ProductRecord, dict[str, ImageRecord]]], int | None]:
        """A page of accepted rows; returns ([(row, images)], last line if more follow)."""
        from schemas.records import ACCEPTED
        rows = self.rows_after(batch_id, after_line=after_line, limit=limit + 1, status=ACCEPTED)
        more = len(rows) > limit
        rows = rows[:limit]
        images = self.images_for(batch_id, (h for r in rows for h in r.image_hashes))
        return [(r, images) for r in rows], (rows[-1].line if more and rows else None)


class WebhookStore(abc.ABC):
    """Webhook subscriptions and the delivery log."""

    @abc.abstractmethod
    def create_subscription(self, subscription: SubscriptionRecord) -> SubscriptionRecord: ...

    @abc.abstractmethod
    def count_subscriptions(self, owner: str | None) -> int: ...

    @abc.abstractmethod
    def list_subscriptions(self, owner: str | None) -> list[SubscriptionRecord]:
        """Oldest first."""

    @abc.abstractmethod
    def get_subscription(self, subscription_id: str, owner: str | None = None, *,
                         any_owner: bool = False) -> SubscriptionRecord | None: ...

    @abc.abstractmethod
    def update_subscription(self, subscription_id: str, owner: str | None,
                            changes: dict) -> SubscriptionRecord | None:
        """Set these fields (see SubscriptionRecord.changed); None when it is not there."""

    @abc.abstractmethod
    def delete_subscription(self, subscription_id: str, owner: str | None) -> bool: ...

    @abc.abstractmethod
    def rotate_secret(self, subscription_id: str, owner: str | None) -> SubscriptionRecord | None:
        """A new secret, the old one kept for the overlap; None when it is not there or its
        secret changed meanwhile (a concurrent rotation)."""

    @abc.abstractmethod
    def disable_subscription(self, subscription_id: str, reason: str) -> None: ...

    @abc.abstractmethod
    def subscribers_for(self, owner: str | None, event: str) -> list[SubscriptionRecord]:
        """Enabled subscriptions of `owner` that asked for `event`, oldest first."""

    @abc.abstractmethod
    def insert_delivery(self, delivery: DeliveryRecord) -> bool:
        """Store a new delivery; False when one with the same id exists (already announced)."""

    @abc.abstractmethod
    def get_delivery(self, delivery_id: str, owner: str | None = None, *,
                     any_owner: bool = False) -> DeliveryRecord | None: ...

    @abc.abstractmethod
    def list_deliveries(self, batch_id: str) -> list[DeliveryRecord]:
        """A batch's deliveries, oldest first (their bodies may be left out)."""

    @abc.abstractmethod
    def claim_attempt(self, delivery_id: str, number: int,
                      lease_until: datetime) -> DeliveryRecord | None:
        """Take scheduled attempt `number` of a pending delivery; None when it is not this
        attempt's turn (already made, delivery finished, or another worker holds it)."""

    @abc.abstractmethod
    def record_attempt(self, delivery_id: str, number: int, attempt: AttemptRecord, *,
                       status: str, next_attempt_at: datetime | None) -> None:
        """Log scheduled attempt `number` and move the delivery on (next attempt or its end)."""

    @abc.abstractmethod
    def record_manual_attempt(self, delivery_id: str, attempt: AttemptRecord, *,
                              succeeded: bool) -> None:
        """Log a redelivery; a success marks the delivery succeeded (and stops its retries)."""

    @abc.abstractmethod
    def overdue(self, grace: timedelta, limit: int = 1000) -> list[DeliveryRecord]:
        """Pending deliveries late by more than `grace` and not held by a worker (their
        scheduled job was lost); only id and next_attempt_no need be filled."""


class IdempotencyStore(abc.ABC):
    """Idempotency keys of uploads: one record per (caller, key), kept for 24 hours."""

    TTL = timedelta(hours=24)

    @abc.abstractmethod
    def find(self, owner: str | None, key: str) -> IdempotencyRecord | None: ...

    @abc.abstractmethod
    def claim(self, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """Record that this key made this batch; None when it was recorded first."""

    @abc.abstractmethod
    def release(self, owner: str | None, key: str, batch_id: str) -> None:
        """Forget a key whose request did not go through (so the caller may send it again)."""


class SourceStore(abc.ABC):
    """What the last successful processing of each input URL made, per owner and output
    fingerprint (SourceRecord): what a later batch may reuse instead of encoding again."""

    @abc.abstractmethod
    def find(self, owner: str | None, fingerprint: str,
             urls: Iterable[str]) -> dict[str, SourceRecord]:
        """The records of these URLs for this owner and fingerprint, by URL, in one read by
        their ids (a chunk's images at once)."""

    @abc.abstractmethod
    def remember(self, records: list[SourceRecord]) -> None:
        """Store the records in one write (a chunk's, gathered), each replacing the one with its
        id (the newest processing wins; of two with one id in the list, the later)."""


class Stores(abc.ABC):
    """One implementation of every store, and what the service needs of its database."""

    name: str  # what /readyz and start-up messages call it
    batches: BatchStore
    products: ProductStore
    webhooks: WebhookStore
    idempotency: IdempotencyStore
    sources: SourceStore

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create tables or indexes behind every query (idempotent)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise unless the database answers."""
