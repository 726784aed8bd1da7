"""Named output sizes (`thumb=200,medium=800`): the longest edge of extra, smaller outputs."""
from __future__ import annotations

import re

from schemas.booleans import BOOLEANS
from schemas.quoting import quoted

MIN_EDGE = 16
MAX_EDGE = 4096
MAX_SIZES = 5
# A name shows in a CSV column header and an object name: short, lowercase, no separators.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,19}")


def parse_sizes(text: str | None) -> dict[str, int]:
    """`name=edge` pairs separated by commas, in order; {} for nothing. Raises ValueError with
    a message that names what is wrong."""
    sizes: dict[str, int] = {}
    if not text or not text.strip():
        return sizes
    for item in text.split(","):
        name, equals, edge = (part.strip() for part in item.partition("="))
        if not equals or not name or not edge:
            raise ValueError(f"{quoted(item.strip())} is not name=pixels (e.g. thumb=200)")
        if not _NAME.fullmatch(name):
            raise ValueError(f"size name {quoted(name)} must be 1 to 20 lowercase letters, digits, "
                             "'_' or '-', starting with a letter or digit")
        if name in sizes:
            raise ValueError(f"size name {quoted(name)} is given twice")
        if not re.fullmatch(r"[0-9]{1,5}", edge) or not MIN_EDGE <= int(edge) <= MAX_EDGE:
            raise ValueError(f"size {quoted(name)}: the longest edge must be a whole number of "
                             f"pixels from {MIN_EDGE} to {MAX_EDGE}, got {quoted(edge)}")
        sizes[name] = int(edge)
        if len(sizes) > MAX_SIZES:
            raise ValueError(f"at most {MAX_SIZES} sizes")
    return sizes


def parse_full_size(text: str | None, default: bool, sizes: dict[str, int]) -> bool:
    """The `full_size` upload option: true or false (also 1/0, yes/no, on/off: BOOLEANS),
    `default` when not given; false needs at least one size. Raises ValueError naming what is wrong."""
    if text is None:
        value = default
    else:
        value = BOOLEANS.get(text.strip().lower())
        if value is None:
            raise ValueError("must be true or false (also 1/0, yes/no, on/off), got "
                             f"{quoted(text)}")
    if not value and not sizes:
        raise ValueError("false needs at least one size (e.g. sizes=thumb=200,large=1200): "
                         "without a full-size output, an image's outputs are its sizes")
    return value


def largest_size(sizes: dict[str, int]) -> tuple[str, int]:
    """The (name, edge) of the largest size, the first of equal ones: without a full-size
    output the main output is this size's (and serves the others as large)."""
    name = max(sizes, key=lambda n: sizes[n])
    return name, sizes[name]


def size_column(name: str) -> str:
    """The output CSV column of a size: `Output Image Urls (thumb)`."""
    return f"Output Image Urls ({name})"
