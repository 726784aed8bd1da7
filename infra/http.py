"""The one HTTP client for user-chosen URLs (image downloads, webhook delivery).

- `make_session()`: requests-hardened's address filter with the checked address pinned (no DNS
  rebinding between check and connect), a stricter second check of the pinned address, pooled
  connections, and nothing from the environment: no proxies, no `.netrc`, no cookies.
- `deadline(seconds)`: one deadline over everything a thread does with such a session inside
  the block (redirects, headers, body). A watchdog thread shuts the socket down when it passes,
  so a peer that drips a byte a second fails on time. The socket is taken from the connection
  before the response is read: when a response ends by closing the connection (HTTP/1.0,
  `Connection: close`), `http.client` hands its socket to the response and the connection no
  longer holds it.
- `connection_failure()`, `short_error()` and `caused_by()`: how failures are worded and
  recognised, the same for both callers.

Not bounded by the deadline: DNS resolution (``getaddrinfo`` cannot be interrupted; the system
resolver's own timeout applies).
"""
from __future__ import annotations

import contextlib
import heapq
import http.cookiejar
import ipaddress
import itertools
import socket
import threading
import time
from typing import Iterable, Iterator

import requests
from requests.adapters import HTTPAdapter
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from requests_hardened.ip_filter_adapter import IPFilterAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from infra.per_process import per_process
from infra.settings import Settings
from infra.url_safety import is_public_address

USER_AGENT = "Batchpress/1.0 (+image compression)"


# --------------------------------------------------------------------------- deadline watchdog

class Watch:
    """One deadline; when it passes, the socket in use is shut down. `expired` tells afterwards:
    a shutdown during the headers or a close-delimited body can look like their clean end."""

    __slots__ = ("deadline", "expired", "done", "conn", "sock", "lock")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False
        self.done = False
        self.conn: HTTPConnection | None = None
        self.sock: socket.socket | None = None  # the socket the response reads from
        self.lock = threading.Lock()

    def attach(self, conn: HTTPConnection) -> None:
        with self.lock:
            self.conn, self.sock = conn, None
            conn._batchpress_watch = self  # type: ignore[attr-defined]
            if self.expired:
                _shutdown(conn.sock)

    def attach_socket(self, conn: HTTPConnection, sock: socket.socket | None) -> None:
        """Keep the request's socket: the response may take it away from the connection."""
        with self.lock:
            if self.conn is conn:
                self.sock = sock
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            conn = self.conn
            # The connection may meanwhile serve another request (back in the pool): leave it.
            if conn is not None and getattr(conn, "_batchpress_watch", None) is self:
                _shutdown(getattr(conn, "sock", None))
                _shutdown(self.sock)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.conn = self.sock = None


def _shutdown(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watchdog:
    """A single daemon thread that expires watches at their deadlines (one per process)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float) -> Watch:
        watch = Watch(deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadline",
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


_watchdog = per_process(_Watchdog)  # a forked child has none of the parent's threads
_current = threading.local()  # the watch of the deadline block running in this thread


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Watch]:
    """One deadline over every request this thread makes with a `make_session` session inside
    the block: when it passes, the socket in use is shut down. Check `.expired` on the yielded
    watch afterwards."""
    watch = _watchdog().watch(time.monotonic() + seconds)
    previous = getattr(_current, "watch", None)
    _current.watch = watch
    try:
        yield watch
    finally:
        watch.finish()
        _current.watch = previous


class _WatchedMixin:
    """Hands the connection, then its socket, to this thread's deadline watch."""

    def request(self, *args, **kwargs):  # type: ignore[override]
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args, **kwargs):  # type: ignore[override]
        # The request is sent, so the socket exists; after this call a response that will close
        # owns it and `self.sock` is None.
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach_socket(self, self.sock)  # type: ignore[attr-defined]
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# --------------------------------------------------------------------------- session

def _pinned_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])


class _PooledMixin:
    """Connection pools sized for the caller's concurrency, with deadline-aware connections."""

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
                 exempt_loopback: Iterable[str] = (), user_agent: str = USER_AGENT,
                 trusted_origins: Iterable[str] = ()) -> requests.Session:
    """A pooled session that refuses non-public addresses unless ALLOW_PRIVATE_URLS is set.

    `pool_size` is the number of connections kept per host; size it to the number of threads
    that share the session. `exempt_loopback` names loopback addresses (e.g. "127.0.0.2") let
    through the filter while everything else stays refused: for tests of the filter only.
    `trusted_origins` are URL prefixes (`http://127.0.0.1:9000/`, TRUSTED_IMAGE_ORIGINS) fetched
    without the address filter; requests picks the adapter by the longest matching prefix, so
    each hop of a redirect is filtered again unless it stays on a trusted origin.
    """
    exempt = frozenset(ipaddress.ip_address(a) for a in exempt_loopback)
    if any(not a.is_loopback for a in exempt):
        raise ValueError("only loopback addresses can be exempted from the address filter")
    session = HTTPSession(Config(
        ip_filter_enable=False,  # we mount the filtering adapters ourselves, with pool sizes
        ip_filter_allow_loopback_ips=False,
        never_redirect=True,  # redirects are followed by the caller, each hop re-checked
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
    for prefix in trusted_origins:
        session.mount(prefix, _PlainAdapter(pool_connections=pools, pool_maxsize=pool_size))
    # Proxies, .netrc credentials and cookies from the environment or from earlier requests
    # must not reach user-chosen hosts; a proxy would also bypass the address pinning.
    session.trust_env = False
    session.cookies = _refuse_all_cookies()
    session.headers["Accept-Encoding"] = "identity"  # bodies are read capped, as sent
    return session


# --------------------------------------------------------------------------- error wording

def short_error(error: BaseException) -> str:
    """An exception's message for a user, cut at 200 characters."""
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def connection_failure(error: BaseException, host: str) -> str:
    """What went wrong reaching `host`, in the words both image downloads and webhook
    deliveries use (never the exception's own text, which holds internals)."""
    text = repr(error)
    if "resolve" in text or "NameResolution" in text or "gaierror" in text:
        return f"could not resolve host {host}"
    if "SSLError" in text or isinstance(error, requests.exceptions.SSLError):
        return f"TLS error talking to {host}"
    if "Connection refused" in text or "ConnectionRefused" in text:
        return f"connection refused by {host}"
    return f"could not connect to {host}: connection failed"


def caused_by(error: BaseException, *kinds: type[BaseException]) -> bool:
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
