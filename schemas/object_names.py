"""Readable names for output objects: the input's file name, cleaned to what a URL carries as is."""
from __future__ import annotations

import re
from posixpath import basename, splitext
from urllib.parse import unquote, urlsplit

MAX_STEM = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def object_stem(url: str, fallback: str = "image") -> str:
    """The input file's name without its extension (`…/p800_coffee.jpg?w=2` -> `p800_coffee`),
    every run of characters other than ASCII letters, digits, `.`, `_` and `-` made one `_`,
    at most MAX_STEM long; `fallback` when nothing is left."""
    stem = splitext(basename(unquote(urlsplit(url).path)))[0]
    stem = _UNSAFE.sub("_", stem)[:MAX_STEM].strip("._-")
    return stem or fallback
