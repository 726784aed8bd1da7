"""What the stores keep: batches, product rows, images, subscriptions, deliveries, idempotency
keys, as typed records with their derived values and state rules. Every store implementation
takes and returns these; none of them knows how a record is built or what it means."""
from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta, timezone

from schemas.batch import BatchStatus, final_status
from schemas.csv_format import Dialect
from schemas.reuse import source_id
from schemas.timestamps import now

# Image states, row states, delivery states.
PENDING, PROCESSED, FAILED = "pending", "processed", "failed"
ACCEPTED, REJECTED = "accepted", "rejected"
SUCCEEDED = "succeeded"

ACTIVE = (BatchStatus.QUEUED, BatchStatus.PROCESSING)
RETRYABLE = (BatchStatus.COMPLETED_WITH_ERRORS, BatchStatus.FAILED)
EVENTS = ("batch.completed", "batch.completed_with_errors", "batch.failed", "batch.cancelled")
ROTATION_OVERLAP = timedelta(hours=24)


def aware(value: datetime | None) -> datetime | None:
    """Stores may hand back naive UTC datetimes (MongoDB without tz_aware, mongomock)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


# --- ids ----------------------------------------------------------------------------------------

def new_batch_id() -> str:
    return "bat_" + secrets.token_hex(12)


def new_subscription_id() -> str:
    return "whk_" + secrets.token_hex(12)


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (Standard Webhooks' format)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def url_hash(url: str) -> str:
    """The stable id of an input URL within a batch (also names its output object)."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def product_id(batch_id: str, line: int) -> str:
    return f"{batch_id}:{line:09d}"


def image_id(batch_id: str, digest: str) -> str:
    return f"{batch_id}:{digest}"


def idempotency_id(owner: str | None, key: str) -> str:
    """One record per (caller, key)."""
    return f"{owner}:{key}"


# --- batch --------------------------------------------------------------------------------------

@dataclass(slots=True)
class BatchRecord:
    id: str
    owner: str | None
    status: BatchStatus
    filename: str | None
    csv_key: str
    csv_sha256: str
    csv_bytes: int
    webhook_url: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    rows_total: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    images_total: int = 0
    images_processed: int = 0
    images_failed: int = 0
    images_reused: int = 0  # of the processed slots, those whose outputs were made before
    # Bytes downloaded and stored for the batch's processed images (each distinct image once).
    bytes_in: int = 0
    bytes_out: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # extra outputs: name -> longest edge
    # No full-size output (upload option full_size=false): the main output is the largest size.
    sizes_only: bool = False
    parsed: bool = False  # the whole file has been read (rows.done_reading)
    # Blocks of rows whose counts are in the totals: the watermark that keeps a re-run parse
    # from counting a block twice.
    flushed: int = 0
    chunks: int = 0
    error: str | None = None
    finish_seq: int = 0
    header: list[str] | None = None
    # The input file's dialect, kept when its header is read (None: not read yet, or a batch
    # from before it was kept); output.csv and errors.csv are written in it by default.
    csv_delimiter: str | None = None
    csv_bom: bool | None = None
    retries: int = 0
    # The stall sweeper's bookkeeping (see claimed_by_sweep).
    sweeps: int = 0
    swept_progress: list | None = None
    swept_at: datetime | None = None
    cancelled_at: datetime | None = None
    retried_at: datetime | None = None

    def __post_init__(self):
        self.status = BatchStatus(self.status)

    @classmethod
    def new(cls, *, batch_id: str, owner: str | None, filename: str | None, csv_key: str,
            csv_sha256: str, csv_bytes: int, webhook_url: str | None,
            sizes: dict[str, int] | None = None, sizes_only: bool = False) -> "BatchRecord":
        stamp = now()
        return cls(id=batch_id, owner=owner, status=BatchStatus.QUEUED, filename=filename,
                   csv_key=csv_key, csv_sha256=csv_sha256, csv_bytes=csv_bytes,
                   webhook_url=webhook_url, created_at=stamp, updated_at=stamp,
                   sizes=dict(sizes or {}), sizes_only=sizes_only)

    @property
    def full_size(self) -> bool:
        """Its images get a full-size output (upload option full_size)."""
        return not self.sizes_only

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def dialect(self) -> Dialect:
        """The input's dialect; comma without BOM when unknown (what downloads always were)."""
        return Dialect(self.csv_delimiter or ",", bom=bool(self.csv_bom))

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def done_slots(self) -> int:
        return self.images_processed + self.images_failed

    @property
    def progress(self) -> float:
        """Finished image slots over known slots, 0..1."""
        if self.images_total:
            return round(min(self.done_slots / self.images_total, 1.0), 4)
        # Nothing to do: a parsed batch with no images is done, an unparsed one has not begun.
        return 1.0 if self.finished and self.parsed else 0.0

    @property
    def ready_to_finish(self) -> bool:
        """Processing, parsed, and every image slot processed or failed."""
        return (self.status == BatchStatus.PROCESSING and self.parsed
                and self.done_slots >= self.images_total)

    def outcome(self) -> tuple[BatchStatus, str | None]:
        """The final status its counts give, and the error that goes with it."""
        status = final_status(self.rows_invalid, self.images_total, self.images_failed,
                              self.rows_valid)
        error = self.error
        if status == BatchStatus.FAILED and not error:
            error = ("no valid rows in the file" if self.rows_valid == 0
                     else "every image failed; see errors.csv")
        return status, error

    def sweep_stamp(self) -> datetime:
        """The updated_at a sweeper's claim sets: now, but always later than the one read, since
        the claim is conditional on updated_at and two claims in one millisecond must not both
        match."""
        return max(now(), aware(self.updated_at) + timedelta(milliseconds=1))

    def next_sweep(self) -> tuple[int, list]:
        """(sweeps, swept_progress) after one more claim by the stall sweeper: `sweeps` counts
        the claims in a row that found no progress since the previous one (finished image
        slots; rows read count as progress too)."""
        progress = [bool(self.parsed), self.flushed, self.done_slots]
        sweeps = self.sweeps + 1 if self.swept_progress == progress else 1
        return sweeps, progress


# --- product rows and images --------------------------------------------------------------------

@dataclass(slots=True)
class ImageRecord:
    """One unique input URL of a batch: fetched and encoded once, however many slots use it."""
    id: str
    batch_id: str
    url: str
    hash: str
    occurrences: int
    chunk: int
    status: str = PENDING
    output_url: str | None = None
    output_key: str | None = None
    error: str | None = None
    error_code: str | None = None  # a schemas.failures.FailureCode value
    bytes_in: int | None = None
    bytes_out: int | None = None
    content_type: str | None = None
    kept_original: bool = False  # the output is the input with its metadata removed
    reused: bool = False  # its outputs are copies of a previous batch's (see SourceRecord)
    # What a processed image is: the output's pixel size, the input's and the output's format.
    width: int | None = None
    height: int | None = None
    format: str | None = None
    output_format: str | None = None
    sizes: dict[str, str] = field(default_factory=dict)  # size name -> its output URL
    attempts: int = 0
    # The last block of rows whose uses of this URL are in `occurrences` (see add_images).
    last_flush: int = 0

    @classmethod
    def pending(cls, batch_id: str, url: str, chunk: int) -> "ImageRecord":
        digest = url_hash(url)
        return cls(id=image_id(batch_id, digest), batch_id=batch_id, url=url, hash=digest,
                   occurrences=0, chunk=chunk)


@dataclass(slots=True)
class ImageOutcome:
    """What the exports (output.csv, errors.csv, outputs.zip) show of an image: its state and
    outputs, read without the rest of its record (ProductStore.image_outcomes)."""
    hash: str
    status: str
    output_url: str | None = None
    output_key: str | None = None
    sizes: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None


@dataclass(slots=True)
class ImagesAdded:
    """What adding one block's image uses to the store did (ProductStore.add_images)."""
    created: list[str] = field(default_factory=list)  # ids of images new in this block
    # Uses added to images already processed or failed: they count as done at once.
    late_processed: int = 0
    late_failed: int = 0
    # Of the late processed uses, those of an image whose outputs were reused (images.reused).
    late_reused: int = 0
    # Some of the block's uses were found already counted: an earlier run of the parse got
    # this far, so its chunk jobs may exist already.
    seen_before: bool = False


@dataclass(slots=True)
class ProductRecord:
    """One data row of the input file, accepted or rejected, with the cells it came with."""
    id: str
    batch_id: str
    line: int
    cells: list[str]
    serial_raw: str
    url_slots: int
    status: str
    error: str | None = None
    serial_no: int | None = None
    product_name: str | None = None
    input_image_urls: list[str] = field(default_factory=list)
    image_hashes: list[str] = field(default_factory=list)
    empty_slots: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    def output_slots(self, images: dict[str, ImageRecord | ImageOutcome],
                     size: str | None = None) -> list[str]:
        """One output URL (of `size`, when given) per part of the input cell ('' where none)."""
        if not self.accepted:
            return [""] * (self.url_slots or 1)
        outputs = [((images[h].sizes.get(size) if size else images[h].output_url)
                    if h in images else None) or "" for h in self.image_hashes]
        for index in self.empty_slots:  # an empty part of the cell keeps its slot
            outputs.insert(index, "")
        return outputs

    def images_of(self, images: dict[str, ImageRecord | ImageOutcome]
                  ) -> list[tuple[str, ImageRecord | ImageOutcome | None]]:
        """(input URL, its image) for each URL of an accepted row, in order."""
        return [(url, images.get(digest))
                for url, digest in zip(self.input_image_urls, self.image_hashes)]

    @staticmethod
    def display_status(image_states: set[str]) -> str:
        """A product's status from its images' states."""
        if PENDING in image_states:
            return "processing"
        if image_states == {PROCESSED}:
            return "completed"
        if image_states == {FAILED}:
            return "failed"
        return "completed_with_errors"


# --- sources: what a re-import may reuse --------------------------------------------------------

@dataclass(slots=True)
class SourceRecord:
    """The last successful processing of one input URL, for one owner and one output fingerprint
    (schemas/reuse.py): how to recognise the same image again (the validators its server sent,
    the SHA-256 of its bytes), what it was, and where its outputs are (the keys of the batch that
    stored them last)."""
    id: str
    owner: str | None
    url: str
    fingerprint: str
    sha256: str
    batch_id: str
    output_key: str
    content_type: str
    bytes_in: int
    bytes_out: int
    width: int | None = None
    height: int | None = None
    format: str | None = None
    output_format: str | None = None
    kept_original: bool = False
    # Size name -> its object's key, or None where the main output serves that size.
    size_keys: dict[str, str | None] = field(default_factory=dict)
    final_url: str | None = None  # after redirects: the resource the validators belong to
    etag: str | None = None
    last_modified: str | None = None
    updated_at: datetime | None = None

    @classmethod
    def new(cls, *, owner: str | None, url: str, fingerprint: str, **values) -> "SourceRecord":
        return cls(id=source_id(owner, fingerprint, url), owner=owner, url=url,
                   fingerprint=fingerprint, updated_at=now(), **values)

    def validators(self) -> dict[str, str]:
        """The headers of a conditional GET for the resource at `final_url`."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def within(self, max_download_bytes: int, max_image_pixels: int) -> bool:
        """Whether the image is still within the limits (they may have been lowered since)."""
        pixels = (self.width or 0) * (self.height or 0)
        return self.bytes_in <= max_download_bytes and pixels <= max_image_pixels


# --- webhooks -----------------------------------------------------------------------------------

@dataclass(slots=True)
class SubscriptionRecord:
    """A webhook subscription. Secrets are kept (HMAC needs them), never shown after creation
    or rotation."""
    id: str
    owner: str | None
    url: str
    events: list[str]
    description: str | None
    secret: str
    created_at: datetime
    updated_at: datetime
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    previous_secret: str | None = None
    previous_secret_expires_at: datetime | None = None

    @classmethod
    def new(cls, *, owner: str | None, url: str, events: list[str],
            description: str | None) -> "SubscriptionRecord":
        stamp = now()
        return cls(id=new_subscription_id(), owner=owner, url=url, events=list(events),
                   description=description, secret=new_secret(), created_at=stamp,
                   updated_at=stamp)

    def signing_secrets(self, at: datetime | None = None) -> list[str]:
        """The secrets that sign now: the current one, and during a rotation the previous too."""
        at = at or now()
        found = [self.secret]
        expires = aware(self.previous_secret_expires_at)
        if self.previous_secret and expires and expires > at:
            found.append(self.previous_secret)
        return found

    def rotated(self, at: datetime | None = None) -> "SubscriptionRecord":
        """A new secret; the one it replaces keeps signing (alongside) for ROTATION_OVERLAP."""
        at = at or now()
        return replace(self, secret=new_secret(), previous_secret=self.secret,
                       previous_secret_expires_at=at + ROTATION_OVERLAP, updated_at=at)

    def changed(self, changes: dict) -> dict:
        """The fields an update sets: the changes, the time, and re-enabling clears the reason."""
        changes = {**changes, "updated_at": now()}
        if changes.get("enabled") is True:
            changes.update(disabled_reason=None, disabled_at=None)
        return changes


@dataclass(slots=True)
class AttemptRecord:
    """One attempt at sending a delivery (scheduled or manual)."""
    at: datetime
    number: int | None = None
    manual: bool = False
    url: str | None = None
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None
    response: str | None = None
    next_attempt_at: datetime | None = None

    @classmethod
    def of(cls, *, at: datetime, number: int | None, manual: bool, url: str | None,
           outcome: dict, next_attempt_at: datetime | None = None) -> "AttemptRecord":
        return cls(at=at, number=number, manual=manual, url=url,
                   status_code=outcome.get("status_code"), error=outcome.get("error"),
                   duration_ms=outcome.get("duration_ms"), response=outcome.get("response"),
                   next_attempt_at=next_attempt_at)


@dataclass(slots=True)
class DeliveryRecord:
    """One event for one target. Its id (the webhook-id) is derived from the batch, the finish
    and the target, so inserting it is what makes an event happen exactly once."""
    id: str
    batch_id: str
    owner: str | None
    event: str
    finish_seq: int
    url: str
    subscription_id: str | None
    body: str  # the exact text every attempt sends
    status: str = PENDING
    attempts: list[AttemptRecord] = field(default_factory=list)
    attempt_count: int = 0
    next_attempt_no: int = 1
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None

    def __post_init__(self):
        if self.created_at is None:
            stamp = now()
            self.created_at = self.updated_at = stamp
            if self.status == PENDING and self.next_attempt_at is None:
                self.next_attempt_at = stamp


# --- idempotency keys ---------------------------------------------------------------------------

@dataclass(slots=True)
class IdempotencyRecord:
    """That the request with this key, from this caller, made this batch."""
    id: str
    owner: str | None
    key: str
    batch_id: str
    fingerprint: str
    created_at: datetime

    @classmethod
    def new(cls, owner: str | None, key: str, *, batch_id: str,
            fingerprint: str) -> "IdempotencyRecord":
        return cls(id=idempotency_id(owner, key), owner=owner, key=key, batch_id=batch_id,
                   fingerprint=fingerprint, created_at=now())
