"""Products and their images as the API shows them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ImageOut(BaseModel):
    input_url: str
    output_url: str | None = None
    status: Literal["pending", "processed", "failed"]
    error: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None


class ProductOut(BaseModel):
    serial_no: int
    product_name: str
    input_image_urls: list[str]
    output_image_urls: list[str | None]
    status: Literal["processing", "completed", "completed_with_errors", "failed"]
    images: list[ImageOut]
