"""Products and their images as the API shows them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from schemas.failures import FailureCode


class ImageOut(BaseModel):
    input_url: str
    output_url: str | None = None
    status: Literal["pending", "processed", "failed"]
    error: str | None = None
    code: FailureCode | None = Field(None, description=(
        "Why the image failed, as a stable code (the `error` message may change wording)."))
    bytes_in: int | None = None
    bytes_out: int | None = None
    kept_original: bool = Field(False, description=(
        "True when the output is the input file itself with its metadata removed, because "
        "re-encoding it would not have made it smaller."))


class ProductOut(BaseModel):
    serial_no: int
    product_name: str
    input_image_urls: list[str]
    output_image_urls: list[str | None]
    status: Literal["processing", "completed", "completed_with_errors", "failed"]
    images: list[ImageOut]
