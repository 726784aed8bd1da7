"""Request and response bodies of the HTTP API that wrap the core models: pages, forms, health."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from schemas.batch import BatchOut
from schemas.product import ProductOut


class BatchPage(BaseModel):
    """A page of batches, newest first."""
    items: list[BatchOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; "
                                                      "null on the last page.")


class ProductItem(ProductOut):
    line: int = Field(description="1-based line number of the row in the uploaded file.")


class ProductPage(BaseModel):
    """A page of a batch's products, in input order."""
    items: list[ProductItem]
    next_cursor: str | None = None


class UploadForm(BaseModel):
    """multipart/form-data upload."""
    file: bytes = Field(json_schema_extra={"format": "binary"},
                        description="The CSV file (UTF-8; `,`, `;` or tab separated).")
    # An empty example, so a form filled from the examples (Swagger UI's "Try it out") sends
    # no webhook instead of the placeholder "string", which is no URL at all.
    webhook_url: str = Field("", max_length=2048, examples=[""],
                             description="Called when the batch finishes: an absolute https URL "
                                         "of a public host. Empty or left out: no webhook.")
    # A real example, for the same reason ("string" is no size list).
    sizes: str | None = Field(None, examples=["thumb=200,medium=800"], description=(
        "Extra outputs as name=longest edge in pixels, e.g. thumb=200,medium=800 (16-4096, at "
        "most 5; names: lowercase letters, digits, _ and -). Left out: DEFAULT_SIZES; empty: "
        "none."))
    full_size: bool | None = Field(None, examples=[True], description=(
        "false: no full-size output; each image's main output (`Output Image Urls`, "
        "`output_url`) is its largest size, and JPEGs are decoded only as large as that needs. "
        "Needs at least one size. Left out: DEFAULT_FULL_SIZE (true)."))


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str] = Field(description="`ok` for each of redis, mongodb and s3.")


class EventsToken(BaseModel):
    """A short-lived token for opening a batch's events stream where no header can be sent."""
    token: str | None = Field(description="Signed, bound to this batch and API key; null when "
                                          "the server has no API keys (none is needed).")
    expires_in: int | None = Field(description="Seconds the token is accepted for.")
    events_url: str = Field(description="The events stream's path, with `?token=` when needed.")
