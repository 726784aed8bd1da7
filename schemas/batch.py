"""Batches as the API shows them: status values, counts, links."""
from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from schemas.timestamps import Timestamp


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


class ImageCounts(BaseModel):
    total: int = 0
    processed: int = 0
    failed: int = 0


class BatchLinks(BaseModel):
    self: str
    products: str
    output_csv: str
    errors_csv: str


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
    progress: float = Field(ge=0, le=1)
    error: str | None = None
    webhook_url: str | None = None
    links: BatchLinks


def final_status(rows_invalid: int, images_total: int, images_failed: int,
                 rows_valid: int) -> BatchStatus:
    """Which finished status a batch gets from its counts."""
    if rows_valid == 0 or (images_total and images_failed == images_total):
        return BatchStatus.FAILED
    if rows_invalid or images_failed:
        return BatchStatus.COMPLETED_WITH_ERRORS
    return BatchStatus.COMPLETED
