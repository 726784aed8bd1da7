"""Reading the uploaded CSV back from S3 as a stream of (line number, cells)."""
from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator

from schemas.csv_format import HeaderError, parse_header

csv.field_size_limit(2**31 - 1)  # any field of a file within MAX_UPLOAD_BYTES

MAX_HEADER_CHARS = 1024 * 1024


class CsvFileError(Exception):
    """The file as a whole cannot be read (the batch fails with this message)."""


def read_csv(binary) -> tuple[list[str], Iterator[tuple[int, list[str], bool]]]:
    """The header and an iterator of (first line of the record, cells, decoded cleanly).

    The header is read by schemas.csv_format.parse_header, the very parser the upload check uses;
    lines end at LF, CRLF or a lone CR. Undecodable bytes become U+FFFD so one bad row fails alone
    instead of the whole file.
    """
    text = io.TextIOWrapper(_Readable(binary), encoding="utf-8-sig", errors="replace", newline="")
    header, ahead = _read_header(text)
    if header.blank:
        raise CsvFileError("the file is empty or its first line is blank")
    delimiter = header.delimiter

    def rows() -> Iterator[tuple[int, list[str], bool]]:
        # Whole lines read past the header first, then the rest of the stream.
        reader = csv.reader(itertools.chain(io.StringIO(ahead, newline=""), text),
                            delimiter=delimiter)
        consumed = header.lines
        try:
            for cells in reader:
                start = consumed + 1
                consumed = header.lines + reader.line_num
                if not cells or all(not c.strip() for c in cells):
                    continue
                yield start, cells, not any("\ufffd" in c for c in cells)
        except csv.Error as error:
            raise CsvFileError(f"line {consumed + 1}: {error}") from None

    return header.cells, rows()


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

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
