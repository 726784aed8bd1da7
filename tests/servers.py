"""Real loopback servers the tests start: redis-server, a tiny HTTP server for images and
webhooks, and DripServer, a misbehaving peer for every way an HTTP answer can be framed."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, stopped by PID.

    With `appendonly`, every write goes to an AOF file in its own directory, so `restart()`
    (SIGTERM, then a new server on the same port and directory) comes back with the data.
    """

    def __init__(self, appendonly: bool = False):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.appendonly = appendonly
        self.dir = tempfile.mkdtemp(prefix="bp-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._start()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def _terminate(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the server and start it again on the same port and data directory."""
        self._terminate()
        self._start()

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.dir, ignore_errors=True)


class Route:
    """What the HTTP server answers for one path."""

    def __init__(self, body: bytes = b"", status: int = 200, headers: dict | None = None,
                 delay_per_chunk: float = 0.0, chunk: int = 65536):
        self.body, self.status, self.headers = body, status, headers or {}
        self.delay_per_chunk, self.chunk = delay_per_chunk, chunk


class HeldRoute:
    """A route that answers `route` only once `release()` is called (or `timeout` passed): a
    download held in flight for as long as a test needs."""

    def __init__(self, route: Route, timeout: float = 30.0):
        self.route, self.timeout = route, timeout
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def __call__(self, handler) -> Route:
        self._released.wait(self.timeout)
        return self.route


class ConditionalRoute:
    """An image as a CDN serves it, for HttpServer.routes: with an `ETag` (from its bytes) and a
    `Last-Modified`, answering `304 Not Modified` to a matching `If-None-Match` (or, without
    one, to an `If-Modified-Since` not before its change) when `honour_validators`; else `200`
    and the bytes every time, as servers that ignore validators do. Counts what it saw:
    `requests`, `conditional` (requests that carried validators), `not_modified` (304s sent).
    Set `body` to change the image: a new ETag and Last-Modified follow."""

    def __init__(self, body: bytes, *, honour_validators: bool = True,
                 content_type: str = "image/jpeg"):
        self.honour_validators, self.content_type = honour_validators, content_type
        self.requests = self.conditional = self.not_modified = 0
        self._lock = threading.Lock()
        self.body = body

    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self.etag = '"' + sha256(value).hexdigest()[:16] + '"'
        # Whole seconds, as HTTP dates have; a change is always at least a second later.
        self.modified = max(int(time.time()), getattr(self, "_modified", 0) + 1)
        self._modified = self.modified
        self.last_modified = format_datetime(
            datetime.fromtimestamp(self.modified, timezone.utc), usegmt=True)

    def _unchanged(self, headers) -> bool:
        match, since = headers.get("If-None-Match"), headers.get("If-Modified-Since")
        if match is not None:
            return self.etag in [tag.strip() for tag in match.split(",")] or match.strip() == "*"
        if since is not None:
            try:
                return parsedate_to_datetime(since).timestamp() >= self.modified
            except (TypeError, ValueError):
                return False
        return False

    def __call__(self, handler) -> "Route":
        headers = {"ETag": self.etag, "Last-Modified": self.last_modified,
                   "Content-Type": self.content_type}
        with self._lock:
            self.requests += 1
            asked = ("If-None-Match" in handler.headers
                     or "If-Modified-Since" in handler.headers)
            self.conditional += asked
            if self.honour_validators and self._unchanged(handler.headers):
                self.not_modified += 1
                return Route(b"", 304, {**headers, "Content-Type": None})
        return Route(self.body, 200, headers)


class HttpServer:
    """A threaded HTTP server on 127.0.0.1 with routes set by the test; records every request.

    A route may also be a callable(handler) -> Route, to answer differently per request.
    """

    def __init__(self):
        self.routes: dict[str, Route | callable] = {}
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append({"method": self.command, "path": self.path,
                                        "headers": dict(self.headers), "body": body})
                route = server.routes.get(self.path.split("?")[0])
                if callable(route):
                    route = route(self)
                if route is None:
                    route = Route(b"not found", 404)
                self.send_response(route.status)
                headers = {"Content-Length": str(len(route.body)), **route.headers}
                for name, value in headers.items():
                    if value is not None:
                        self.send_header(name, value)
                self.end_headers()
                if self.command == "HEAD":
                    return
                try:
                    for start in range(0, len(route.body), route.chunk):
                        self.wfile.write(route.body[start:start + route.chunk])
                        self.wfile.flush()
                        if route.delay_per_chunk:
                            time.sleep(route.delay_per_chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_HEAD = do_PUT = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class DripServer:
    """A misbehaving HTTP peer on 127.0.0.1, written on a raw socket so every byte is chosen.

    `framing` is how the response ends: "http1.0" (an HTTP/1.0 answer with no length, ended by
    closing the socket), "close" (HTTP/1.1, `Connection: close`, no length), "chunked" or
    "keep-alive" (HTTP/1.1 with a `Content-Length`). `drip` is where it stalls: in the "body" or
    in the "headers", one byte every `every` seconds, `count` bytes in all (so it would end by
    itself, late). `cut` is set when the client hung up before the server had sent everything:
    the behaviour a deadline must produce. `requests` holds each request's head and body,
    `request_times` when each arrived.
    """

    FRAMINGS = ("http1.0", "close", "chunked", "keep-alive")

    def __init__(self, framing: str = "close", drip: str = "body", *, status: int = 200,
                 every: float = 0.02, count: int = 250):
        if framing not in self.FRAMINGS or drip not in ("body", "headers"):
            raise ValueError(f"unknown framing {framing!r} or drip {drip!r}")
        self.framing, self.drip, self.status = framing, drip, status
        self.every, self.count = every, count
        self.cut = threading.Event()
        self.served = threading.Event()  # sent everything without the client hanging up
        self.requests: list[bytes] = []
        self.request_times: list[float] = []  # time.time() at each request's arrival
        self._stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/") -> str:
        return self.base + path

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = conn.recv(65536)
            if not piece:
                return
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            piece = conn.recv(65536)
            if not piece:
                break
            body += piece
        self.requests.append(head + b"\r\n\r\n" + body)
        self.request_times.append(time.time())

    def _drip(self, conn: socket.socket, make_piece) -> bool:
        """Send `count` pieces, one every `every` s; False when the client hung up first."""
        for n in range(self.count):
            if self._stop.wait(self.every):
                return False
            try:
                conn.sendall(make_piece(n))
            except OSError:
                self.cut.set()
                return False
        return True

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn.settimeout(10)
            self._read_request(conn)
            version = "HTTP/1.0" if self.framing == "http1.0" else "HTTP/1.1"
            head = [f"{version} {self.status} Dripping", "Content-Type: application/octet-stream"]
            if self.framing == "close":
                head.append("Connection: close")
            if self.drip == "headers":
                conn.sendall(("\r\n".join(head) + "\r\nX-Drip: ").encode())
                if self._drip(conn, lambda n: b"a"):
                    conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
                    self.served.set()
                return
            if self.framing == "chunked":
                head.append("Transfer-Encoding: chunked")
            elif self.framing == "keep-alive":
                head.append(f"Content-Length: {self.count}")
            conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            piece = (lambda n: b"1\r\nx\r\n") if self.framing == "chunked" else (lambda n: b"x")
            if self._drip(conn, piece):
                if self.framing == "chunked":
                    conn.sendall(b"0\r\n\r\n")
                self.served.set()
        except OSError:
            self.cut.set()
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()


def serve_until_terminated(service) -> None:
    """Keep a stand-in run from the command line (`python -m tests.…`) up until SIGTERM or
    SIGINT; SIGUSR1 stops `service` and SIGUSR2 starts it again, so a test in another process
    can play an outage. `service` has `start()` and `stop()`."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=service.stop).start())
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=service.start).start())
    while not stop.wait(0.5):
        pass
    service.stop()
