"""The input CSV's shape: required columns and their aliases, the header parser, header mapping.

Pure functions only: the upload check (api/upload.py) and the worker (worker/csv_reader.py) both
read the header with `parse_header`, so a file accepted at upload parses the same way later.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from typing import NamedTuple

from schemas.booleans import BOOLEANS
from schemas.quoting import quoted, quoted_list

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


DELIMITERS = (",", ";", "\t")
# The names the download endpoints' `delimiter` parameter takes (contract addition, docs/csv.md),
# and the `bom` parameter's values; INPUT names the uploaded file's own.
INPUT = "input"
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", INPUT: None}
BOM_VALUES = {**BOOLEANS, INPUT: None}


@dataclass(frozen=True)
class Dialect:
    """How a CSV file is written: its delimiter and whether it starts with a UTF-8 BOM. The
    batch keeps its input's; output.csv and errors.csv are written with `,` and no BOM, as the
    contract shows them, or in the input's (`?delimiter=input&bom=input`: the console's
    downloads), so a file saved by a `;`-locale Excel comes back as that Excel opens it."""

    delimiter: str = ","
    bom: bool = False


def decoder_check(block: bytes, final: bool) -> str:
    """Decode a first block strictly as UTF-8 (BOM allowed); raises UnicodeDecodeError."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    return decoder.decode(block, final=final)


class HeaderError(ValueError):
    """The header lacks a required column, names one twice, or cannot be read as CSV."""

    def __init__(self, message: str, missing: list[str] | None = None,
                 column: str | None = None):
        super().__init__(message)
        self.missing = missing or []
        self.column = column  # the offending column's name, when one is to blame


class ParsedHeader(NamedTuple):
    """The file's first record, read as CSV."""

    cells: list[str]  # stripped
    delimiter: str
    length: int  # characters of the text it takes, its line ending included
    lines: int  # physical lines it spans (more than one when a quoted cell holds a newline)
    ended: bool  # a line ending closes it (False: the text ran out first)

    @property
    def blank(self) -> bool:
        return not any(self.cells)


def parse_header(text: str) -> ParsedHeader:
    """Read the first CSV record of decoded `text` (BOM already removed).

    Lines end at LF, CRLF or a lone CR, as in the worker's TextIOWrapper(newline=""), and a quoted
    cell may hold line endings. The delimiter is the one of `,` `;` tab that splits the record
    into the most cells (`,` on a tie). Raises HeaderError when the csv module refuses the text.
    """
    best = None
    for delimiter in DELIMITERS:
        parsed = _first_record(text, delimiter)
        if best is None or len(parsed.cells) > len(best.cells):
            best = parsed
    return best


def _first_record(text: str, delimiter: str) -> ParsedHeader:
    consumed: list[str] = []
    exhausted = False

    def lines():
        nonlocal exhausted
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line
        exhausted = True

    try:
        cells = next(csv.reader(lines(), delimiter=delimiter), [])
    except csv.Error as error:
        raise HeaderError(f"the header cannot be read as CSV: {error}") from None
    ended = not exhausted and bool(consumed) and consumed[-1].endswith(("\r", "\n"))
    return ParsedHeader(cells=[cell.strip() for cell in cells], delimiter=delimiter,
                        length=sum(map(len, consumed)), lines=len(consumed), ended=ended)


def has_data_rows(text: str, delimiter: str) -> bool:
    """Whether the text after the header holds a record with a non-blank cell (the worker skips
    records like `,,`). Unreadable text counts as data: the worker reports it row by row."""
    try:
        return any(any(cell.strip() for cell in cells)
                   for cells in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error:
        return True


@dataclass(frozen=True)
class ColumnMap:
    """Where each required column sits in the header, plus the header itself."""

    header: list[str]
    serial: int
    name: int
    urls: int

    def output_header(self, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
        """The input header with `Output Image Urls` (then the `extra` columns) right after
        the URL column."""
        return (self.header[: self.urls + 1] + [OUTPUT_COLUMN, *extra]
                + self.header[self.urls + 1:])

    def output_row(self, cells: list[str], outputs: list[str]) -> list[str]:
        """A data row as the output CSV has it: `outputs` (the cells of `Output Image Urls`
        and the `extra` columns) right after the URL column. A row shorter than the header
        (e.g. rejected for it) is padded with empty cells first, so every column stays under
        its name; cells past the header's width are kept as they are, in order."""
        row = list(cells) + [""] * (len(self.header) - len(cells))
        row[self.urls + 1:self.urls + 1] = outputs
        return row


def map_columns(header: list[str], added: tuple[str, ...] = ()) -> ColumnMap:
    """Find the three required columns (case- and punctuation-insensitive). A column named
    like one the output CSV adds (`Output Image Urls`, and the `added` ones: a size's column)
    is refused: the output would have two columns of that name."""
    ours = {normalise_header(name): name for name in (OUTPUT_COLUMN, *added)}
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
        if key in ours:
            what = ("the column" if ours[key] == OUTPUT_COLUMN
                    else f"the column {ours[key]!r}, which")
            raise HeaderError(
                f"column {quoted(cell)} (column {index + 1}) is {what} Batchpress adds to the "
                "output CSV; rename or remove it", column=cell)
    missing = [DISPLAY[f] for f in (SERIAL, NAME, URLS) if f not in found]
    if missing:
        raise HeaderError(
            "the header lacks required column(s): " + ", ".join(missing)
            + f"; found: {quoted_list(header) or 'nothing'}",
            missing=missing,
        )
    return ColumnMap(header=list(header), serial=found[SERIAL], name=found[NAME], urls=found[URLS])


# Spreadsheets run a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: object) -> object:
    """A cell a spreadsheet shows as text: one that starts like a formula gets a leading `'`.
    For files the service writes from user input that are not the user's own rows echoed back."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
