"""Objects (uploads and output images) as files under one folder: the embedded default's S3.

An object is written to a temporary file in the folder's `.tmp/` and then renamed over its
key's path (`os.replace`, atomic on one file system), so a reader, another process, or a restart
after a crash sees either the whole object or none of it. Content types follow the key's suffix
(the service names every object by what it holds: `.csv`, `.jpg`, `.webp`, ...).
"""
from __future__ import annotations

import mimetypes
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

COPY_BLOCK = 1024 * 1024


class ObjectNotFound(KeyError):
    """No object under that key."""


class BadKey(ValueError):
    """A key that would leave the folder (absolute, `..`, empty parts)."""


class FileBody:
    """An object's bytes as a stream: `read(n)`, `iter_chunks(n)`, `close()` (like botocore's)."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def iter_chunks(self, chunk_size: int = COPY_BLOCK):
        try:
            while data := self._file.read(chunk_size):
                yield data
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()


class ObjectFolder:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._tmp = self.root / ".tmp"

    def ensure(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        if (not parts or key.startswith("/") or "\\" in key or "//" in key or key.endswith("/")
                or any(p in ("", ".", "..") or p.startswith(".") for p in parts)):
            raise BadKey(f"not an object key: {key!r}")
        return self.root.joinpath(*parts)

    def _write(self, key: str, fill) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(handle, "wb") as out:
                fill(out)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, lambda out: out.write(data))

    def upload_stream(self, key: str, stream: BinaryIO) -> None:
        """Copy a stream in blocks (never whole in memory); nothing is stored if it fails."""
        self._write(key, lambda out: shutil.copyfileobj(stream, out, COPY_BLOCK))

    def copy(self, source: str, key: str) -> None:
        """A copy of the object at `source` under `key`, of its own (changing or deleting one
        leaves the other as it is); ObjectNotFound when there is none."""
        try:
            with open(self.path(source), "rb") as original:
                self.upload_stream(key, original)
        except FileNotFoundError:
            raise ObjectNotFound(source) from None

    def open_stream(self, key: str) -> FileBody:
        try:
            return FileBody(self.path(key))
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def get(self, key: str) -> dict:
        """The object's body, content type and length (the shape of S3's get_object)."""
        body = self.open_stream(key)
        return {"Body": body, "ContentType": content_type(key),
                "ContentLength": os.fstat(body._file.fileno()).st_size}

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        if not (self.root.is_dir() and os.access(self.root, os.W_OK)):
            raise OSError(f"{self.root} is not a writable folder")


def content_type(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    if key.endswith(".webp"):
        return "image/webp"
    return guessed or "application/octet-stream"
