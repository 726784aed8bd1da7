"""Batches as the API shows them: status values, counts, links."""
from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from schemas.timestamps import Timestamp

if TYPE_CHECKING:
    from schemas.records import BatchRecord


class BatchStatus(str, Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = {BatchStatus.COMPLETED, BatchStatus.COMPLETED_WITH_ERRORS,
            BatchStatus.FAILED, BatchStatus.CANCELLED}


class RowCounts(BaseModel):
    total: int = 0
    valid: int = 0
    invalid: int = 0
    done_reading: bool = Field(
        False, description="The whole file has been read. While false the file is still being "
        "read: the row and image totals grow, and images already found are being processed.")


class ImageCounts(BaseModel):
    total: int = 0
    processed: int = 0
    failed: int = 0
    reused: int = Field(0, description=(
        "Of the processed image slots, those whose outputs were copied from an earlier batch "
        "of the same API key and output settings, without encoding (see the image's `reused`)."))


class ByteCounts(BaseModel):
    """Bytes downloaded (`in`) and stored (`out`) for the batch's processed images, each
    distinct image once."""
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)
    in_: int = Field(0, alias="in")
    out: int = 0


def saving_percent(bytes_in: int, bytes_out: int) -> float | None:
    """How much smaller the outputs are than the inputs, in percent (one decimal)."""
    return round(100 * (bytes_in - bytes_out) / bytes_in, 1) if bytes_in else None


class BatchLinks(BaseModel):
    self: str
    products: str
    output_csv: str
    errors_csv: str
    outputs_zip: str = Field(description="Every output image of the batch in one ZIP.")


class BatchOut(BaseModel):
    """The batch object of contract section 3."""

    id: str
    status: BatchStatus
    filename: str | None
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    rows: RowCounts
    images: ImageCounts
    bytes: ByteCounts = Field(default_factory=ByteCounts)
    saving_percent: float | None = Field(None, description=(
        "100 x (bytes.in - bytes.out) / bytes.in; null until an image is processed."))
    progress: float = Field(ge=0, le=1)
    error: str | None = None
    webhook_url: str | None = None
    sizes: dict[str, int] = Field(default_factory=dict, description=(
        "The extra output sizes asked for at upload: size name -> longest edge in pixels, "
        "in the order given (empty: none)."))
    full_size: bool = Field(True, description=(
        "Whether each image also gets a full-size output; false: its outputs are its sizes "
        "only (the `full_size` upload option)."))
    links: BatchLinks


def final_status(rows_invalid: int, images_total: int, images_failed: int,
                 rows_valid: int) -> BatchStatus:
    """Which finished status a batch gets from its counts."""
    if rows_valid == 0 or (images_total and images_failed == images_total):
        return BatchStatus.FAILED
    if rows_invalid or images_failed:
        return BatchStatus.COMPLETED_WITH_ERRORS
    return BatchStatus.COMPLETED


# --- from the stored record ---------------------------------------------------------------------

def batch_out(batch: "BatchRecord", base_url: str = "") -> BatchOut:
    """The contract's batch object for a stored batch; links are absolute when base_url is."""
    root = f"{base_url.rstrip('/')}/api/v1/batches/{batch.id}"
    return BatchOut(
        id=batch.id, status=batch.status, filename=batch.filename,
        created_at=batch.created_at, started_at=batch.started_at, finished_at=batch.finished_at,
        rows={"total": batch.rows_total, "valid": batch.rows_valid,
              "invalid": batch.rows_invalid, "done_reading": batch.parsed},
        images={"total": batch.images_total, "processed": batch.images_processed,
                "failed": batch.images_failed, "reused": batch.images_reused or 0},
        bytes=ByteCounts(in_=batch.bytes_in or 0, out=batch.bytes_out or 0),
        saving_percent=saving_percent(batch.bytes_in or 0, batch.bytes_out or 0),
        progress=batch.progress, error=batch.error, webhook_url=batch.webhook_url,
        sizes=dict(batch.sizes), full_size=batch.full_size,
        links={"self": root, "products": root + "/products",
               "output_csv": root + "/output.csv", "errors_csv": root + "/errors.csv",
               "outputs_zip": root + "/outputs.zip"},
    )


def batch_json(batch: "BatchRecord", base_url: str = "") -> dict:
    """The batch object as JSON-ready data (what the API answers and webhooks carry)."""
    return batch_out(batch, base_url).model_dump(mode="json")
