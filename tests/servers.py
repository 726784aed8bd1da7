"""Real loopback servers the tests start: redis-server, and a tiny HTTP server for images/webhooks."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free loopback port, stopped by PID."""

    def __init__(self):
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bp-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("redis-server did not start")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Route:
    """What the HTTP server answers for one path."""

    def __init__(self, body: bytes = b"", status: int = 200, headers: dict | None = None,
                 delay_per_chunk: float = 0.0, chunk: int = 65536):
        self.body, self.status, self.headers = body, status, headers or {}
        self.delay_per_chunk, self.chunk = delay_per_chunk, chunk


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
