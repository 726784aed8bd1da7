"""Checking an uploaded CSV's first block at once, and streaming the whole file to S3 under a cap."""
from __future__ import annotations

import hashlib
import io

from api.errors import ApiError
from schemas.csv_format import (HeaderError, decoder_check, has_data_rows, map_columns,
                                parse_header)
from schemas.quoting import excerpt

FIRST_BLOCK = 64 * 1024
HEADER_LISTED = 100  # header cells a problem lists (each cut like every quoted value)
CSV_TYPES = {"text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"}


def read_first_block(stream) -> bytes:
    """Up to FIRST_BLOCK bytes, reading until the block is full or the stream ends."""
    parts, size = [], 0
    while size < FIRST_BLOCK:
        piece = stream.read(FIRST_BLOCK - size)
        if not piece:
            break
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)


def check_first_block(block: bytes, complete: bool,
                      added_columns: tuple[str, ...] = ()) -> None:
    """Refuse at once a file that is empty, binary, not UTF-8, or lacks the required header
    (or has a column named like one of `added_columns`, those the output CSV adds for sizes).

    The header is read by schemas.csv_format.parse_header, as the worker reads it later.
    """
    if not block.strip():
        raise _empty()
    nul = block.find(b"\x00")
    if nul >= 0:
        raise ApiError(415, "Not a CSV file",
                       f"the file looks binary (a NUL byte at offset {nul}); "
                       "upload a UTF-8 CSV text file", kind="binary-file")
    try:
        text = decoder_check(block, final=complete)
    except UnicodeDecodeError as error:
        raise ApiError(415, "Not UTF-8",
                       f"the file is not UTF-8 text: invalid byte 0x{block[error.start]:02x} at "
                       f"offset {error.start}; save it as 'CSV UTF-8'", kind="not-utf8") from None
    if not text.strip():  # e.g. only a BOM
        raise _empty()
    try:
        parsed = parse_header(text)
    except HeaderError as error:
        raise ApiError(422, "Bad header", str(error), kind="bad-header") from None
    if not parsed.ended and not complete:
        raise ApiError(422, "No header", f"no header line ends in the first {FIRST_BLOCK} bytes",
                       kind="no-header")
    if parsed.blank:
        raise ApiError(422, "No header", "the first line is blank; it must be the header row",
                       kind="no-header")
    header = parsed.cells
    try:
        map_columns(header, added_columns)
    except HeaderError as error:
        raise ApiError(422, "Missing column" if error.missing else "Bad header", str(error),
                       kind="missing-column" if error.missing else "bad-header",
                       missing_columns=error.missing or None,
                       column=excerpt(error.column) if error.column is not None else None,
                       header=[excerpt(cell) for cell in header[:HEADER_LISTED]]) from None
    if complete and not has_data_rows(text[parsed.length:], parsed.delimiter):
        raise ApiError(422, "No data rows", "the file has a header but no data rows (lines "
                       "with only empty cells do not count)", kind="no-rows")


def _empty() -> ApiError:
    return ApiError(400, "Empty file", "the uploaded file is empty", kind="empty-file")


class UploadTooLarge(Exception):
    pass


class CappedHashingReader(io.RawIOBase):
    """Reads `first` then `stream`, hashing as it goes and stopping past `limit` bytes."""

    def __init__(self, first: bytes, stream, limit: int):
        self._first = memoryview(first)
        self._stream = stream
        self._limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._first:
            n = min(len(buffer), len(self._first))
            buffer[:n] = self._first[:n]
            self._first = self._first[n:]
        else:
            data = self._stream.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        self.size += n
        if self.size > self._limit:
            raise UploadTooLarge()
        self.sha256.update(buffer[:n])
        return n

