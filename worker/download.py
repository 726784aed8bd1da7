"""Fetching one user-supplied image URL safely: SSRF filter, redirects, deadline and byte cap.

The rules (CONTRACT.md sections 2 and 4):

- Only URLs of the shape ``schemas/urls.py`` allows are fetched (http or https, a host, no
  userinfo, at most 2048 characters), at every hop.
- Unless ``ALLOW_PRIVATE_URLS`` is set, every host is resolved and refused when the address is not
  public (loopback, private, link-local incl. 169.254.169.254, CGNAT, multicast, reserved,
  IPv4-mapped/compatible/translated, NAT64, 6to4, Teredo, site-local, ``localhost``, decimal and
  octal spellings of those). The check is made by the session of ``infra/http.py``, after DNS
  resolution, on the very address it then connects to. A refused URL never gets a connection.
- Redirects are followed by hand, at most ``MAX_REDIRECTS`` hops, each hop checked like the first.
- ``DOWNLOAD_TIMEOUT_S`` is a deadline for the whole download, redirects included
  (``infra.http.deadline``): a server that drips a byte a second, in the headers or the body,
  whatever way it ends its response, fails on time. Connect and per-read timeouts are bounded by
  what is left of it.
- A ``Content-Length`` over ``MAX_DOWNLOAD_BYTES`` is refused before the body is read, and the
  stream is cut at the cap whatever the headers say.
- A conditional GET (``fetch(..., validators=)``, for re-imports) sends ``If-None-Match`` /
  ``If-Modified-Since`` only to the URL the validators came from (the last hop of the redirects
  followed then), under the same rules; a ``304`` is accepted only in answer to them.

Not bounded by the deadline: DNS resolution (``getaddrinfo`` cannot be interrupted; the system
resolver's own timeout applies).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urljoin

import requests
from requests_hardened.ip_filter import InvalidIPAddress
from urllib3.exceptions import ReadTimeoutError

from infra import http
from infra.http import Watch, caused_by, connection_failure, deadline, short_error
from infra.settings import Settings
from schemas.failures import FailureCode
from schemas.retry_after import retry_after_seconds
from schemas.reuse import validator
from schemas.quoting import quoted
from schemas.urls import UrlShapeError, check_fetchable

# Each read is a trip through requests' and urllib3's Python: 256 KiB pieces take a photo in
# 1-3 of them (64 KiB: 0.81 ms of CPU a download on loopback, 256 KiB: 0.68). The deadline and
# the byte cap hold whatever the size (the watchdog cuts a read short; at most one piece over).
CHUNK = 256 * 1024


class DownloadError(Exception):
    """The image could not be fetched; the message is shown to the user, `code` says why."""

    def __init__(self, message: str, code: FailureCode, *, status: int | None = None,
                 host: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.status = status            # the HTTP status, when the server answered
        self.host = host
        self.retry_after = retry_after  # seconds, from a Retry-After header

    @property
    def throttled(self) -> bool:
        """The server asks us to come back later (429, or 503 with Retry-After)."""
        return self.status == 429 or (self.status == 503 and self.retry_after is not None)

    @property
    def transient(self) -> bool:
        """Worth another try soon: the connection failed or the server had an error (5xx)."""
        return (self.code == FailureCode.CONNECTION_FAILED
                or (self.status is not None and self.status >= 500 and not self.throttled))


class RefusedURL(DownloadError):
    """The URL was refused before any connection was opened (SSRF rule, scheme, userinfo)."""

    def __init__(self, message: str, code: FailureCode = FailureCode.REFUSED_URL):
        super().__init__(message, code)


_CONNECTION = FailureCode.CONNECTION_FAILED


# --------------------------------------------------------------------------- session

def make_session(settings: Settings, pool_size: int = 8, *,
                 exempt_loopback: Iterable[str] = (),
                 trusted_origins: Iterable[str] = ()) -> requests.Session:
    """The hardened session of infra/http.py, asking for images. `pool_size`: the threads that
    share it; `exempt_loopback`: loopback addresses let through the filter, for its tests;
    `trusted_origins`: URL prefixes fetched without the filter (TRUSTED_IMAGE_ORIGINS)."""
    session = http.make_session(settings, pool_size, exempt_loopback=exempt_loopback,
                                trusted_origins=trusted_origins)
    session.headers["Accept"] = "image/*,*/*;q=0.5"
    return session


# --------------------------------------------------------------------------- download

@dataclass(frozen=True)
class Validators:
    """What a conditional GET sends back: the `headers` (If-None-Match, If-Modified-Since) for
    the resource at `url` (the last hop when the validators were received)."""
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Fetched:
    """One download's outcome: the body, or `not_modified` (a 304 to a conditional GET, no
    body); the URL it came from after redirects and the validators it sent."""
    data: bytes
    url: str
    etag: str | None = None
    last_modified: str | None = None
    not_modified: bool = False


def download(session: requests.Session, url: str, settings: Settings, *,
             read_timeout_s: float | None = None) -> bytes:
    """The body of `url`, within the byte cap and the whole-download deadline.

    Raises DownloadError (RefusedURL when the URL is refused before connecting) with a message
    meant for the user. `read_timeout_s` bounds each wait for data (default: the deadline).
    """
    return fetch(session, url, settings, read_timeout_s=read_timeout_s).data


def fetch(session: requests.Session, url: str, settings: Settings, *,
          validators: Validators | None = None,
          read_timeout_s: float | None = None) -> Fetched:
    """download(), conditional when `validators` are given (a `304` from their URL answers
    `not_modified`), with the URL reached and the answer's validators."""
    timeout = settings.download_timeout_s
    if read_timeout_s is None:
        read_timeout_s = getattr(settings, "read_timeout_s", None) or timeout
    with deadline(timeout) as watch:
        return _download(session, url, settings, watch, read_timeout_s, validators)


def _download(session: requests.Session, url: str, settings: Settings, watch: Watch,
              read_timeout_s: float, validators: Validators | None = None) -> Fetched:
    limit = settings.max_download_bytes
    timeout = settings.download_timeout_s
    for hop in range(settings.max_redirects + 1):
        host = _check_url(url, redirected=hop > 0)
        remaining = watch.deadline - time.monotonic()
        if remaining <= 0:
            raise DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
        # Validators belong to the resource they came from: no other host or path gets them.
        conditional = bool(validators and validators.headers and url == validators.url)
        try:
            response = session.get(
                url, stream=True, allow_redirects=False,
                headers=validators.headers if conditional else None,
                timeout=(min(settings.connect_timeout_s, remaining),
                         min(read_timeout_s, remaining)),
            )
        except InvalidIPAddress:
            # The host, not the address: where a name resolves inside the network is not the
            # uploader's to learn.
            where = f"redirected to {quoted(host)}, which" if hop else f"the host {quoted(host)}"
            raise RefusedURL(f"refused: {where} resolves to a loopback, private, link-local or "
                             "reserved address (an operator can allow an origin with "
                             "TRUSTED_IMAGE_ORIGINS)", FailureCode.REFUSED_ADDRESS) from None
        except requests.RequestException as error:
            raise _failure(error, watch, host, timeout) from None
        with response:
            if response.is_redirect:
                location = response.headers["Location"]
                url = urljoin(url, _decode_location(location))
                continue
            etag = validator(response.headers.get("ETag"))
            last_modified = validator(response.headers.get("Last-Modified"))
            if response.status_code == 304 and conditional:
                # A 304 has no body; reading its end hands the connection back to the pool
                # (closing an unread response closes the connection).
                _read_capped(response, limit, watch, host, timeout)
                return Fetched(b"", url, etag, last_modified, not_modified=True)
            if response.status_code != 200:
                raise DownloadError(
                    f"HTTP {response.status_code} from {host}", FailureCode.HTTP_STATUS,
                    status=response.status_code, host=host,
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")))
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > limit:
                raise DownloadError(f"image is {int(declared):,} bytes, over the {limit:,}-byte limit",
                                    FailureCode.TOO_LARGE)
            return Fetched(_read_capped(response, limit, watch, host, timeout), url, etag,
                           last_modified)
    raise DownloadError(f"more than {settings.max_redirects} redirects",
                        FailureCode.TOO_MANY_REDIRECTS)


def _read_capped(response: requests.Response, limit: int, watch: Watch, host: str,
                 timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for piece in response.iter_content(CHUNK):
            size += len(piece)
            if size > limit:
                raise DownloadError(f"image is over the {limit:,}-byte limit", FailureCode.TOO_LARGE)
            chunks.append(piece)
            if watch.expired or time.monotonic() > watch.deadline:
                raise DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
    except requests.RequestException as error:
        raise _failure(error, watch, host, timeout, broke_off=True) from None
    if watch.expired:  # the watchdog's shutdown looks like a clean end of a close-delimited body
        raise DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
    return b"".join(chunks)


def _failure(error: requests.RequestException, watch: Watch, host: str, timeout: float,
             broke_off: bool = False) -> DownloadError:
    if watch.expired or time.monotonic() >= watch.deadline:
        return DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
    if isinstance(error, requests.ConnectTimeout):
        return DownloadError(f"could not connect to {host}: timed out", FailureCode.CONNECTION_FAILED)
    if isinstance(error, requests.Timeout) or caused_by(error, ReadTimeoutError, socket.timeout):
        return DownloadError(f"the image server at {host} stopped sending data", FailureCode.DOWNLOAD_TIMEOUT)
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                          requests.exceptions.MissingSchema)):
        return RefusedURL(f"refused: invalid URL ({short_error(error)})")
    if broke_off:
        return DownloadError(f"download from {host} broke off before the end", _CONNECTION,
                             host=host)
    return DownloadError(connection_failure(error, host), _CONNECTION, host=host)


def _check_url(url: str, *, redirected: bool = False) -> str:
    """The URL's host, when its shape may be fetched (schemas/urls.py); else RefusedURL."""
    try:
        return check_fetchable(url).hostname or ""
    except UrlShapeError as error:
        where = f"redirected to {quoted(url)}: " if redirected else ""
        raise RefusedURL(f"refused: {where}{error}") from None


def _decode_location(location: str) -> str:
    # http.client decodes headers as latin-1; servers send UTF-8 (as requests itself assumes).
    try:
        return location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return location
