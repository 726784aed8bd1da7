"""The shape of a URL the service fetches or calls: one rule, worded once.

Pure (no DNS, no I/O): where a host points is `infra/url_safety.py`'s concern. Two levels:

- `check_absolute_http`: the CSV rule for image URLs (a URL that breaks it rejects its row).
- `check_fetchable`: that, plus what a request needs (no user name or password, a usable port,
  no control characters): each hop of an image download (a URL that breaks it fails its image
  alone, so a row keeps its other images) and webhook URLs (a 422, or a refused delivery).

Errors name what is wrong and never quote the URL: each caller adds the context it has (the
row's URL, the field name, the redirect).
"""
from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048


class UrlShapeError(ValueError):
    """The URL breaks the shape rule; the message says how and is safe to show."""


def check_absolute_http(url: object) -> SplitResult:
    """The parts of a non-empty string of at most MAX_URL_LENGTH characters that is an absolute
    http or https URL with a host; else UrlShapeError."""
    if not isinstance(url, str):
        raise UrlShapeError("the URL must be a string")
    if not url:
        raise UrlShapeError("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UrlShapeError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed "[" of an IPv6 host
        raise UrlShapeError("the URL is not well formed") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlShapeError("not an absolute http(s) URL")
    if not parts.hostname:
        raise UrlShapeError("the URL has no host")
    return parts


def check_fetchable(url: object, *, spaces: bool = True) -> SplitResult:
    """`check_absolute_http`, and no control character, no user name or password, a port from
    1 to 65535 when one is given; with `spaces=False` no whitespace at all. Spaces are allowed
    by default because image URLs copied from spreadsheets hold them (`my photo.jpg`) and
    requests percent-encodes them."""
    parts = check_absolute_http(url)
    text = str(url)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise UrlShapeError("the URL contains a control character")
    if not spaces and any(c.isspace() for c in text):
        raise UrlShapeError("the URL contains a space")
    if "@" in parts.netloc:
        raise UrlShapeError("the URL holds a user name or password")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise UrlShapeError("the URL's port is not a number from 1 to 65535")
    return parts
