"""The input CSV's shape: required columns and their aliases, delimiter detection, header mapping."""
from __future__ import annotations

import re
from dataclasses import dataclass

SERIAL, NAME, URLS = "serial_no", "product_name", "input_image_urls"
OUTPUT_COLUMN = "Output Image Urls"

# Aliases per contract section 1, already normalised (see normalise_header).
ALIASES: dict[str, set[str]] = {
    SERIAL: {"sno", "serialno", "serialnumber"},
    NAME: {"productname", "name"},
    URLS: {"inputimageurls", "imageurls", "urls"},
}
DISPLAY = {SERIAL: "S. No.", NAME: "Product Name", URLS: "Input Image Urls"}

_IGNORED = re.compile(r"[\s._\-]+")


def normalise_header(name: str) -> str:
    """Lower-case, without spaces, dots, underscores and dashes: 'S. No.' -> 'sno'."""
    return _IGNORED.sub("", name).lower()


def detect_delimiter(header_line: str) -> str:
    """`,` unless the header line has more `;` or tabs (spreadsheet exports)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


class HeaderError(ValueError):
    """The header lacks a required column or names one twice."""

    def __init__(self, message: str, missing: list[str] | None = None):
        super().__init__(message)
        self.missing = missing or []


@dataclass(frozen=True)
class ColumnMap:
    """Where each required column sits in the header, plus the header itself."""

    header: list[str]
    serial: int
    name: int
    urls: int

    def output_header(self) -> list[str]:
        """The input header with `Output Image Urls` right after the URL column."""
        return self.header[: self.urls + 1] + [OUTPUT_COLUMN] + self.header[self.urls + 1:]


def map_columns(header: list[str]) -> ColumnMap:
    """Find the three required columns (case- and punctuation-insensitive)."""
    found: dict[str, int] = {}
    for index, cell in enumerate(header):
        key = normalise_header(cell)
        for field, aliases in ALIASES.items():
            if key in aliases:
                if field in found:
                    raise HeaderError(
                        f"column {DISPLAY[field]!r} appears twice in the header "
                        f"(columns {found[field] + 1} and {index + 1})"
                    )
                found[field] = index
    missing = [DISPLAY[f] for f in (SERIAL, NAME, URLS) if f not in found]
    if missing:
        raise HeaderError(
            "the header lacks required column(s): " + ", ".join(missing)
            + f"; found: {', '.join(repr(h) for h in header) or 'nothing'}",
            missing=missing,
        )
    return ColumnMap(header=list(header), serial=found[SERIAL], name=found[NAME], urls=found[URLS])
