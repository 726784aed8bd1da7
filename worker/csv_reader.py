"""Reading the uploaded CSV back from S3 as a stream of (line number, cells)."""
from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Iterator
from typing import NamedTuple

from schemas.csv_format import Dialect, HeaderError, parse_header

csv.field_size_limit(2**31 - 1)  # any field of a file within MAX_UPLOAD_BYTES

MAX_HEADER_CHARS = 1024 * 1024


class CsvFileError(Exception):
    """The file as a whole cannot be read (the batch fails with this message)."""


class CsvFile(NamedTuple):
    """An uploaded CSV as the worker reads it."""

    header: list[str]
    rows: Iterator[tuple[int, list[str], str | None]]
    dialect: Dialect  # its delimiter and BOM, which output.csv and errors.csv are written in


def read_csv(binary) -> CsvFile:
    """The header, an iterator of (first line of the record, cells, problem), and the dialect.

    `problem` is None for a record read cleanly, else why the record cannot be trusted (bytes
    that are not UTF-8, a quote never closed). The header is read by
    schemas.csv_format.parse_header, the very parser the upload check uses; lines end at LF,
    CRLF or a lone CR. Undecodable bytes become U+FFFD so one bad row fails alone instead of
    the whole file.
    """
    readable = _Readable(binary)
    text = io.TextIOWrapper(readable, encoding="utf-8-sig", errors="replace", newline="")
    header, ahead = _read_header(text)
    if header.blank:
        raise CsvFileError("the file is empty or its first line is blank")
    delimiter = header.delimiter

    def rows() -> Iterator[tuple[int, list[str], str | None]]:
        # Whole lines read past the header first, then the rest of the stream.
        lines = _Lines(itertools.chain(io.StringIO(ahead, newline=""), text))
        reader = csv.reader(lines, delimiter=delimiter)
        consumed = header.lines
        try:
            for cells in reader:
                start = consumed + 1
                consumed = header.lines + reader.line_num
                raw = lines.take()
                if not cells or all(not c.strip() for c in cells):
                    continue
                problem = None
                if lines.exhausted:  # the record ran into the end of the file
                    problem = _unclosed_quote(raw, start, delimiter)
                if problem is None and any("\ufffd" in c for c in cells):
                    problem = "the row is not valid UTF-8"
                yield start, cells, problem
        except csv.Error as error:
            raise CsvFileError(f"line {consumed + 1}: {error}") from None

    dialect = Dialect(delimiter, bom=readable.head.startswith(codecs.BOM_UTF8))
    return CsvFile(header.cells, rows(), dialect)


class _Lines:
    """The lines fed to csv.reader, kept until taken: the raw text of the record just read."""

    def __init__(self, source):
        self._taken: list[str] = []
        self.exhausted = False
        self._feed = self._lines(source)

    def _lines(self, source):
        keep = self._taken.append
        for line in source:
            keep(line)
            yield line
        self.exhausted = True

    def __iter__(self):
        return self._feed

    def take(self) -> list[str]:
        taken = self._taken[:]
        self._taken.clear()
        return taken


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _unclosed_quote(raw: list[str], start: int, delimiter: str) -> str | None:
    """The reason for a last record whose quote never closes (csv.reader then reads the rest of
    the file as one cell), naming the line where that quote opened; None for a sound record."""
    text = "".join(raw)
    try:
        list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True))
        return None
    except csv.Error as error:
        if "unexpected end of data" not in str(error):
            return None
    opened = _opening_quote(text, delimiter)
    if opened is None:
        return None
    line = start + len(_LINE_BREAK.findall(text, 0, opened))
    return (f"unclosed quote starting on line {line}: everything after it was read as one "
            "cell, so this row and the lines after it were not read; close the quote")


def _opening_quote(text: str, delimiter: str) -> int | None:
    """Offset of the quote that is still open at the end of `text`, as csv.reader reads it: a
    quote opens a quoted cell only at the start of a cell, and `""` inside one is a quote."""
    at_cell_start = re.compile(rf'(?:^|(?<=[{re.escape(delimiter)}\r\n]))"')
    position = 0
    while (match := at_cell_start.search(text, position)) is not None:
        closing = match.end()
        while True:
            closing = text.find('"', closing)
            if closing < 0:
                return match.start()
            if not text.startswith('"', closing + 1):
                break
            closing += 2
        position = closing + 1
    return None


def _read_header(text: io.TextIOBase):
    """parse_header over whole lines read until the first record ends: (header, lines after it).

    The text read grows by doubling between parses, so a header spanning many lines costs
    linear time.
    """
    lines: list[str] = []
    size, parse_at = 0, 0
    while True:
        line = text.readline()
        lines.append(line)
        size += len(line)
        if line and size < parse_at:
            continue
        read = "".join(lines)
        try:
            header = parse_header(read)
        except HeaderError as error:
            raise CsvFileError(str(error)) from None
        if header.ended or not line:
            return header, read[header.length:]
        if size > MAX_HEADER_CHARS:
            raise CsvFileError(f"the header does not end in the first {MAX_HEADER_CHARS} "
                               "characters (an unclosed quote?)")
        parse_at = 2 * size


class _Readable(io.RawIOBase):
    """Adapts botocore's StreamingBody (or any .read(n)) to io.RawIOBase for TextIOWrapper."""

    def __init__(self, source):
        self._source = source
        self.head = b""  # the first bytes read (up to a BOM's length): whether the file has one

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        if len(self.head) < len(codecs.BOM_UTF8):
            self.head = (self.head + data)[:len(codecs.BOM_UTF8)]
        return len(data)
