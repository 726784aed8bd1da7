"""One data row of the input CSV, validated by the contract's rules."""
from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.quoting import quoted
from schemas.urls import UrlShapeError, check_absolute_http

MAX_NAME = 300
MAX_URLS = 50
MAX_SERIAL = 2**63 - 1  # MongoDB stores integers as at most 8 bytes
# A row's cells are stored in one document (MongoDB's limit: 16 MB); a product row of more
# than a mebibyte is a mistake (a broken quote, a pasted file) rather than a product.
MAX_ROW_BYTES = 1024 * 1024


# Between URLs people write commas, semicolons, pipes, spaces or line breaks. A URL may hold
# commas itself (Cloudinary and imgix transformations: .../w_400,h_300/x.jpg), so a run of these
# characters ends a URL only where it is followed by the next URL (`scheme://`), or where it cannot
# be inside one: a line break or tab, or a separator next to whitespace (", ").
_RUN = re.compile(r"[,;|\s]+")
_URL_START = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # any scheme: ftp:// is refused
_SEPARATOR_CHARS = re.compile(r"[,;|]")


def _ends_url(run: str, cell: str, end: int) -> bool:
    if _URL_START.match(cell, end):
        return True
    if any(c.isspace() and c != " " for c in run):
        return True
    return bool(_SEPARATOR_CHARS.search(run)) and any(c.isspace() for c in run)


def split_url_cell(cell: str) -> list[str]:
    """The URL cell's parts in order, one per output slot, '' for an empty slot.

    Each separator (`,` `;` `|`) beyond the first between two parts, and each before the first
    part or after the last, stands for an empty slot (as in "a,,b"), so the output's slots line
    up with what the cell's author wrote."""
    parts, separators, position = [], [], 0
    for run in _RUN.finditer(cell):
        if run.start() == 0 or run.end() == len(cell) or _ends_url(run.group(), cell, run.end()):
            parts.append(cell[position:run.start()])
            separators.append(len(_SEPARATOR_CHARS.findall(run.group())))
            position = run.end()
    parts.append(cell[position:])
    slots: list[str] = []
    for index, part in enumerate(parts):
        if index:
            slots += [""] * max(separators[index - 1] - 1, 0)
        # An empty first or last part is a slot only when a separator marks it (",a", "a,").
        if part or not separators or (separators[0] if index == 0 else separators[-1]):
            slots.append(part)
    return slots or [""]


def row_size_error(cells: list[str]) -> str | None:
    """Why a row is too big to keep, or None: its cells hold more than MAX_ROW_BYTES of UTF-8."""
    if sum(map(len, cells)) * 4 <= MAX_ROW_BYTES:  # no character takes more than 4 bytes
        return None
    size = sum(len(cell.encode("utf-8", "surrogatepass")) for cell in cells)
    if size <= MAX_ROW_BYTES:
        return None
    return f"the row is {size} bytes long, more than the {MAX_ROW_BYTES} bytes a row may hold"


def storable_cells(cells: list[str]) -> list[str]:
    """The cells, keeping them in order while they fit in MAX_ROW_BYTES and leaving the rest
    empty, so a row rejected for its size can still be stored and shown."""
    budget, kept = MAX_ROW_BYTES, []
    for cell in cells:
        size = len(cell.encode("utf-8", "surrogatepass"))
        if size <= budget:
            kept.append(cell)
            budget -= size
        else:
            kept.append("")
    return kept


class ProductRow(BaseModel):
    """A valid product row: serial number, name, and its image URLs in order."""

    model_config = ConfigDict(frozen=True)

    serial_no: int = Field(gt=0, le=MAX_SERIAL)
    product_name: str = Field(min_length=1, max_length=MAX_NAME)
    input_image_urls: list[str] = Field(min_length=1, max_length=MAX_URLS)

    @field_validator("serial_no", mode="before")
    @classmethod
    def _serial(cls, value):
        text = str(value).strip()
        # ASCII digits (str.isdigit() takes '²' and '١'), not all zeros
        if not re.fullmatch(r"[0-9]*[1-9][0-9]*", text):
            raise ValueError(f"S. No. must be a positive whole number, got {quoted(text)}")
        if len(text.lstrip("0")) > len(str(MAX_SERIAL)):
            raise ValueError(f"S. No. is too large (at most {MAX_SERIAL})")
        return int(text)

    @field_validator("product_name", mode="before")
    @classmethod
    def _name(cls, value):
        return str(value).strip()

    @field_validator("input_image_urls", mode="before")
    @classmethod
    def _urls(cls, value):
        if isinstance(value, str):
            value = [part for part in split_url_cell(value) if part]
        for url in value:
            try:
                check_absolute_http(url)
            except UrlShapeError as error:
                raise ValueError(f"{error}: {quoted(url)}") from None
        return value


def row_error(error: ValidationError) -> str:
    """A short, human reason from a pydantic error: which field and what is wrong."""
    labels = {"serial_no": "S. No.", "product_name": "Product Name",
              "input_image_urls": "Input Image Urls"}
    reasons = []
    for item in error.errors():
        field = labels.get(str(item["loc"][0]), str(item["loc"][0])) if item["loc"] else "row"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "string_too_short":
            message = "must not be empty"
        elif item["type"] == "too_short":
            message = "must hold at least one URL"
        elif item["type"] == "too_long" and field == "Input Image Urls":
            message = f"holds more than {MAX_URLS} URLs"
        elif item["type"] == "string_too_long":
            message = f"is longer than {MAX_NAME} characters: {quoted(item['input'])}"
        elif item["type"] == "less_than_equal" and field == "S. No.":
            message = f"S. No. is too large (at most {MAX_SERIAL})"
        if message.startswith(field + " "):  # "S. No. must be …" needs no "S. No.: " before it
            reasons.append(message)
            continue
        reasons.append(f"{field}: {message}")
    return "; ".join(reasons)
