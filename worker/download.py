"""Fetching one user-supplied image URL safely: SSRF filter, redirects, deadline and byte cap.

The rules (CONTRACT.md sections 2 and 4):

- Only ``http`` and ``https`` URLs with a host and without userinfo are fetched.
- Unless ``ALLOW_PRIVATE_URLS`` is set, every host is resolved and refused when the address is not
  public (loopback, private, link-local incl. 169.254.169.254, CGNAT, multicast, reserved,
  IPv4-mapped/compatible/translated, NAT64, 6to4, Teredo, site-local, ``localhost``, decimal and
  octal spellings of those). The check is done by ``requests-hardened`` after DNS resolution, which
  then connects to the very address it checked (no DNS rebinding between check and connect); we add
  a second, stricter check on the pinned address. A refused URL never gets a connection.
- Redirects are followed by hand, at most ``MAX_REDIRECTS`` hops, each hop checked like the first.
- ``DOWNLOAD_TIMEOUT_S`` is a deadline for the whole download, redirects included: a watchdog
  shuts the socket down when it passes, so a server that drips a byte a second (in the headers or
  the body) fails on time. Connect and per-read timeouts are bounded by what is left of it.
- A ``Content-Length`` over ``MAX_DOWNLOAD_BYTES`` is refused before the body is read, and the
  stream is cut at the cap whatever the headers say.

Not bounded by the deadline: DNS resolution (``getaddrinfo`` cannot be interrupted; the system
resolver's own timeout applies).
"""
from __future__ import annotations

import contextlib
import heapq
import http.cookiejar
import ipaddress
import itertools
import os
import socket
import threading
import time
from typing import Iterable, Iterator
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ReadTimeoutError
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from infra.settings import Settings
from schemas.failures import FailureCode
from infra.url_safety import is_public_address

CHUNK = 64 * 1024
USER_AGENT = "Batchpress/1.0 (+image compression)"

class DownloadError(Exception):
    """The image could not be fetched; the message is shown to the user, `code` says why."""

    def __init__(self, message: str, code: FailureCode):
        super().__init__(message)
        self.code = code


class RefusedURL(DownloadError):
    """The URL was refused before any connection was opened (SSRF rule, scheme, userinfo)."""

    def __init__(self, message: str, code: FailureCode = FailureCode.REFUSED_URL):
        super().__init__(message, code)


_CONNECTION = FailureCode.CONNECTION_FAILED


# --------------------------------------------------------------------------- address policy

def _pinned_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])


# --------------------------------------------------------------------------- deadline watchdog

class _Watch:
    """One download's deadline; when it passes the connection in use is shut down."""

    __slots__ = ("deadline", "expired", "done", "conn", "lock")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False
        self.done = False
        self.conn: HTTPConnection | None = None
        self.lock = threading.Lock()

    def attach(self, conn: HTTPConnection) -> None:
        with self.lock:
            self.conn = conn
            conn._batchpress_watch = self  # type: ignore[attr-defined]
            if self.expired:
                _shutdown(conn)

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            conn = self.conn
            # The connection may meanwhile serve another download (back in the pool): leave it.
            if conn is not None and getattr(conn, "_batchpress_watch", None) is self:
                _shutdown(conn)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.conn = None


def _shutdown(conn: HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watchdog:
    """A single daemon thread that expires watches at their deadlines (restarted after fork)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float) -> _Watch:
        if self._pid != os.getpid():
            self._reset()
        watch = _Watch(deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="download-deadline",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _seq, watch = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0 and not watch.done:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            if not watch.done:
                watch.expire()


_watchdog = _Watchdog()
_current = threading.local()  # the watch of the download running in this thread


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[_Watch]:
    """One deadline over every request this thread makes with a `make_session` session inside
    the block: when it passes, the connection in use is shut down. Check `.expired` on the
    yielded watch afterwards: a shutdown during the headers can look like their clean end."""
    watch = _watchdog.watch(time.monotonic() + seconds)
    previous = getattr(_current, "watch", None)
    _current.watch = watch
    try:
        yield watch
    finally:
        watch.finish()
        _current.watch = previous


class _WatchedMixin:
    """Hands the connection to this thread's deadline watch before each request."""

    def request(self, *args, **kwargs):  # type: ignore[override]
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# --------------------------------------------------------------------------- session

class _PooledMixin:
    """Connection pools sized for the chunk job's concurrency, with deadline-aware connections."""

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)  # type: ignore[misc]
        self.poolmanager.pool_classes_by_scheme = {  # type: ignore[attr-defined]
            "http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _PlainAdapter(_PooledMixin, HTTPAdapter):
    """ALLOW_PRIVATE_URLS: no address filter."""


class _FilteringAdapter(_PooledMixin, IPFilterAdapter):
    """requests-hardened's filter and pinning, plus a stricter check of the pinned address."""

    def __init__(self, *, is_https_proto: bool, exempt: frozenset,
                 pool_connections: int, pool_maxsize: int):
        super().__init__(is_https_proto=is_https_proto, allow_loopback=bool(exempt))
        self._exempt = exempt
        self.init_poolmanager(pool_connections, pool_maxsize)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        ip = _pinned_ip(host_params["host"])
        if not is_public_address(ip, exempt=self._exempt):
            raise InvalidIPAddress(ip)
        return host_params, pool_kwargs


def _refuse_all_cookies() -> http.cookiejar.CookieJar:
    policy = http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
    return requests.cookies.RequestsCookieJar(policy=policy)


def make_session(settings: Settings, pool_size: int = 8, *,
                 exempt_loopback: Iterable[str] = (), user_agent: str = USER_AGENT
                 ) -> requests.Session:
    """A pooled session that refuses non-public addresses unless ALLOW_PRIVATE_URLS is set.

    `pool_size` is the number of connections kept per host; size it to the number of threads
    that share the session. `exempt_loopback` names loopback addresses (e.g. "127.0.0.2") let
    through the filter while everything else stays refused: for tests of the filter only.
    """
    exempt = frozenset(ipaddress.ip_address(a) for a in exempt_loopback)
    if any(not a.is_loopback for a in exempt):
        raise ValueError("only loopback addresses can be exempted from the address filter")
    session = HTTPSession(Config(
        ip_filter_enable=False,  # we mount the filtering adapters ourselves, with pool sizes
        ip_filter_allow_loopback_ips=False,
        never_redirect=True,  # redirects are followed by hand, each hop re-checked
        default_timeout=(settings.connect_timeout_s, settings.download_timeout_s),
        user_agent_override=user_agent,
    ))
    pools = max(16, 2 * pool_size)  # per-host pools kept (images of a batch span a few hosts)
    for scheme in ("http://", "https://"):
        if settings.allow_private_urls:
            adapter: HTTPAdapter = _PlainAdapter(pool_connections=pools, pool_maxsize=pool_size)
        else:
            adapter = _FilteringAdapter(is_https_proto=scheme == "https://", exempt=exempt,
                                        pool_connections=pools, pool_maxsize=pool_size)
        session.mount(scheme, adapter)
    # Proxies, .netrc credentials and cookies from the environment or from earlier downloads
    # must not reach user-chosen hosts; a proxy would also bypass the address pinning.
    session.trust_env = False
    session.cookies = _refuse_all_cookies()
    session.headers["Accept"] = "image/*,*/*;q=0.5"
    session.headers["Accept-Encoding"] = "identity"  # images are compressed already
    return session


# --------------------------------------------------------------------------- download

def download(session: requests.Session, url: str, settings: Settings, *,
             read_timeout_s: float | None = None) -> bytes:
    """The body of `url`, within the byte cap and the whole-download deadline.

    Raises DownloadError (RefusedURL when the URL is refused before connecting) with a message
    meant for the user. `read_timeout_s` bounds each wait for data (default: the deadline).
    """
    timeout = settings.download_timeout_s
    if read_timeout_s is None:
        read_timeout_s = getattr(settings, "read_timeout_s", None) or timeout
    with deadline(timeout) as watch:
        return _download(session, url, settings, watch, read_timeout_s)


def _download(session: requests.Session, url: str, settings: Settings, watch: _Watch,
              read_timeout_s: float) -> bytes:
    limit = settings.max_download_bytes
    timeout = settings.download_timeout_s
    for hop in range(settings.max_redirects + 1):
        host = _check_url(url, redirected=hop > 0)
        remaining = watch.deadline - time.monotonic()
        if remaining <= 0:
            raise DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
        try:
            response = session.get(
                url, stream=True, allow_redirects=False,
                timeout=(min(settings.connect_timeout_s, remaining),
                         min(read_timeout_s, remaining)),
            )
        except InvalidIPAddress:
            where = "redirected to a host that" if hop else "the host"
            raise RefusedURL(f"refused: {where} resolves to a loopback, private, link-local or "
                             "reserved address", FailureCode.REFUSED_ADDRESS) from None
        except requests.RequestException as error:
            raise _failure(error, watch, host, timeout) from None
        with response:
            if response.is_redirect:
                location = response.headers["Location"]
                url = urljoin(url, _decode_location(location))
                continue
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code} from the image server",
                                    FailureCode.HTTP_STATUS)
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > limit:
                raise DownloadError(f"image is {int(declared)} bytes, over the {limit}-byte limit",
                                    FailureCode.TOO_LARGE)
            return _read_capped(response, limit, watch, host, timeout)
    raise DownloadError(f"more than {settings.max_redirects} redirects",
                        FailureCode.TOO_MANY_REDIRECTS)


def _read_capped(response: requests.Response, limit: int, watch: _Watch, host: str,
                 timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for piece in response.iter_content(CHUNK):
            size += len(piece)
            if size > limit:
                raise DownloadError(f"image is over the {limit}-byte limit", FailureCode.TOO_LARGE)
            chunks.append(piece)
            if watch.expired or time.monotonic() > watch.deadline:
                raise DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
    except requests.RequestException as error:
        raise _failure(error, watch, host, timeout, broke_off=True) from None
    if watch.expired:  # the watchdog's shutdown looks like a clean end of a close-delimited body
        raise DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
    return b"".join(chunks)


def _failure(error: requests.RequestException, watch: _Watch, host: str, timeout: float,
             broke_off: bool = False) -> DownloadError:
    if watch.expired or time.monotonic() >= watch.deadline:
        return DownloadError(f"download took longer than {timeout:g} s", FailureCode.DOWNLOAD_TIMEOUT)
    if isinstance(error, requests.ConnectTimeout):
        return DownloadError(f"could not connect to {host}: timed out", FailureCode.CONNECTION_FAILED)
    if isinstance(error, requests.Timeout) or _caused_by(error, ReadTimeoutError, socket.timeout):
        return DownloadError(f"the image server at {host} stopped sending data", FailureCode.DOWNLOAD_TIMEOUT)
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                          requests.exceptions.MissingSchema)):
        return RefusedURL(f"refused: invalid URL ({short_error(error)})")
    if broke_off:
        return DownloadError(f"download from {host} broke off before the end", _CONNECTION)
    text = repr(error)
    if "resolve" in text or "NameResolution" in text or "gaierror" in text:
        return DownloadError(f"could not resolve host {host}", _CONNECTION)
    if "SSLError" in text or isinstance(error, requests.exceptions.SSLError):
        return DownloadError(f"TLS error talking to {host}", _CONNECTION)
    if "Connection refused" in text or "ConnectionRefused" in text:
        return DownloadError(f"connection refused by {host}", _CONNECTION)
    return DownloadError(f"could not fetch from {host}: connection failed", _CONNECTION)


def _caused_by(error: BaseException, *kinds: type[BaseException]) -> bool:
    """Whether `error` wraps one of `kinds` (requests keeps urllib3's error in its args)."""
    seen: set[int] = set()
    stack: list[object] = [error]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kinds):
            return True
        stack.extend(item.args)
        stack.extend((item.__cause__, item.__context__, getattr(item, "reason", None)))
    return False


def _check_url(url: str, *, redirected: bool = False) -> str:
    """The URL's host; refuses other schemes, userinfo, missing hosts and bad ports."""
    prefix = "refused: redirected to " if redirected else "refused: "
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RefusedURL(f"{prefix}an invalid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise RefusedURL(f"{prefix}a {parts.scheme or 'relative'!s} URL; "
                         "only http and https URLs are fetched")
    if "@" in parts.netloc:
        raise RefusedURL(f"{prefix}a URL with a user name or password; those are not fetched")
    if not parts.hostname:
        raise RefusedURL(f"{prefix}a URL without a host")
    if port == 0:
        raise RefusedURL(f"{prefix}a URL with port 0")
    return parts.hostname


def _decode_location(location: str) -> str:
    # http.client decodes headers as latin-1; servers send UTF-8 (as requests itself assumes).
    try:
        return location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return location


def short_error(error: Exception) -> str:
    """An exception's message for a user, cut at 200 characters."""
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "…"
