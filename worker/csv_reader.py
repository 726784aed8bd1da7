"""Reading the uploaded CSV back from S3 as a stream of (line number, cells)."""
from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator

from schemas.csv_format import detect_delimiter

csv.field_size_limit(2**31 - 1)  # any field of a file within MAX_UPLOAD_BYTES


class CsvFileError(Exception):
    """The file as a whole cannot be read (the batch fails with this message)."""


def read_csv(binary) -> tuple[list[str], Iterator[tuple[int, list[str], bool]]]:
    """The header and an iterator of (first line of the record, cells, decoded cleanly).

    Undecodable bytes become U+FFFD so one bad row fails alone instead of the whole file.
    """
    text = io.TextIOWrapper(_Readable(binary), encoding="utf-8-sig", errors="replace", newline="")
    first = text.readline()
    if not first.strip():
        raise CsvFileError("the file is empty or its first line is blank")
    delimiter = detect_delimiter(first.rstrip("\r\n"))
    header = next(csv.reader([first], delimiter=delimiter), [])
    header = [cell.strip() for cell in header]

    def rows() -> Iterator[tuple[int, list[str], bool]]:
        reader = csv.reader(text, delimiter=delimiter)
        consumed = 1
        try:
            for cells in reader:
                start = consumed + 1
                consumed = reader.line_num + 1
                if not cells or all(not c.strip() for c in cells):
                    continue
                yield start, cells, not any("\ufffd" in c for c in cells)
        except csv.Error as error:
            raise CsvFileError(f"line {consumed + 1}: {error}") from None

    return header, rows()


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


def decoder_check(block: bytes, final: bool) -> str:
    """Decode a first block strictly as UTF-8 (BOM allowed); raises UnicodeDecodeError."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    return decoder.decode(block, final=final)
