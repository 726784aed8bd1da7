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
    width: int | None = Field(None, description="The output's width in pixels (upright).")
    height: int | None = Field(None, description="The output's height in pixels (upright).")
    format: str | None = Field(None, description=(
        "The input's format, from its bytes: jpeg, png, gif, webp, bmp, tiff or avif."))
    output_format: str | None = Field(None, description="jpeg, webp, or png (a kept original).")
    sizes: dict[str, str] = Field(default_factory=dict, description=(
        "The URL of each size the batch asked for, by name (the main output where the image "
        "is not larger than that size)."))
    kept_original: bool = Field(False, description=(
        "True when the output is the input file itself with its metadata removed, because "
        "re-encoding it would not have made it smaller."))
    reused: bool = Field(False, description=(
        "True when the image was processed before, for the same API key with the same output "
        "settings, and its server answered 304 Not Modified to a conditional GET or sent the "
        "same bytes: the outputs are server-side copies of the earlier ones (under this batch's "
        "own URLs), nothing was decoded or encoded, and the facts are the earlier ones."))


class ProductOut(BaseModel):
    serial_no: int
    product_name: str
    input_image_urls: list[str]
    output_image_urls: list[str | None]
    status: Literal["processing", "completed", "completed_with_errors", "failed"]
    images: list[ImageOut]
