"""File names inside the ZIP of a batch's output images: `<S. No.> <product>/<input name>.<ext>`,
and `<S. No.> <product>/<input name>-<size>.<ext>` for a size's output.

Names come from users (product names, URL paths), so each part is cleaned to something every
unzip tool accepts on every system: no slashes, control characters, or names Windows refuses, and
a bounded length. Two images that would get the same name are told apart by a ` (2)` suffix.
"""
from __future__ import annotations

import re
import unicodedata
from posixpath import basename, splitext
from urllib.parse import unquote, urlsplit

MAX_PART = 80
_BAD_CHARS = re.compile(r'[<>:"/\\|?*]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}


def clean_part(value: str, fallback: str) -> str:
    """One path component: printable, no separators or reserved characters, at most MAX_PART."""
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in value)
    text = _BAD_CHARS.sub("_", text)
    text = re.sub(r"\s+", " ", text).strip(" .")[:MAX_PART].strip(" .")
    if not text or text.upper() in _WINDOWS_RESERVED:
        return fallback
    return text


def input_stem(url: str, fallback: str) -> str:
    """The input file's name without its extension, from the URL's path."""
    stem = splitext(basename(unquote(urlsplit(url).path)))[0]
    return clean_part(stem, fallback)


class ArchiveNames:
    """Hands out unique entry names, in the order images are added."""

    def __init__(self):
        self._used: set[str] = set()

    def name(self, serial_no: int, product_name: str, url: str, position: int,
             extension: str, size: str | None = None) -> str:
        """The entry of one output: the main one, or the output of `size` (a size name is
        already a safe file-name part: schemas/sizes.py)."""
        folder = clean_part(f"{serial_no} {product_name}", str(serial_no))
        stem = input_stem(url, f"image-{position}") + (f"-{size}" if size else "")
        candidate, n = f"{folder}/{stem}.{extension}", 1
        while candidate.lower() in self._used:  # case-insensitive file systems
            n += 1
            candidate = f"{folder}/{stem} ({n}).{extension}"
        self._used.add(candidate.lower())
        return candidate
