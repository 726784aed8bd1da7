"""A loopback image server for the end-to-end benchmark, run as its own process.

    python bench/imageserver.py DIR [--port 0] [--latency-ms MS] [--validators]

Serves every file of DIR at /<name> (any query string is ignored, so ?copy=N gives distinct URLs
for the same bytes), keeps connections alive (HTTP/1.1), and prints `port <n>` on stdout once
it listens. Files are read into memory at start-up.

With `--validators` each answer carries an `ETag` and a `Last-Modified`, and a request whose
`If-None-Match` matches (or, without one, whose `If-Modified-Since` is not older) gets `304 Not
Modified`, as CDNs answer; under /ignore-validators/<name> the validators are sent but never
honoured (200 and the bytes every time), as some servers do.

Why not plain http.server: it writes the headers and the body in two sends, and with Nagle's
algorithm on, the second send waits for the client's delayed ACK of the first (40 ms on Linux)
on every response. Here the socket has TCP_NODELAY and the headers and body go out in one
sendmsg() when they fit, so a download costs what the bytes cost.
"""
from __future__ import annotations

import hashlib
import mimetypes
import socket
import sys
import time
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IGNORING = "ignore-validators/"
STARTED = int(time.time())  # every file's Last-Modified


def _not_modified(headers, etag: str) -> bool:
    match, since = headers.get("If-None-Match"), headers.get("If-Modified-Since")
    if match is not None:
        return etag in (tag.strip() for tag in match.split(","))
    try:
        return since is not None and parsedate_to_datetime(since).timestamp() >= STARTED
    except (TypeError, ValueError):
        return False


def make_handler(files: dict[str, tuple[bytes, str]], latency_s: float = 0.0,
                 validators: bool = False):
    etags = {name: '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
             for name, (body, _) in files.items()}
    modified = formatdate(STARTED, usegmt=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            if latency_s:
                time.sleep(latency_s)  # a remote image host's response time
            name = self.path.split("?", 1)[0].lstrip("/")
            ignoring = name.startswith(IGNORING)
            name = name.removeprefix(IGNORING)
            found = files.get(name)
            extra = ""
            if found is None:
                body, status, ctype = b"not found", "404 Not Found", "text/plain"
            else:
                body, ctype = found
                status = "200 OK"
                if validators:
                    extra = f"ETag: {etags[name]}\r\nLast-Modified: {modified}\r\n"
                    if not ignoring and _not_modified(self.headers, etags[name]):
                        body, status = b"", "304 Not Modified"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n{extra}"
                    f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n").encode()
            try:
                sent = self.connection.sendmsg([head, body])
                total = len(head) + len(body)
                if sent < total:  # the rest, without copying the body
                    view = memoryview(body)[max(0, sent - len(head)):]
                    if sent < len(head):
                        self.connection.sendall(head[sent:])
                    self.connection.sendall(view)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


def main(argv: list[str]) -> None:
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="wait this long before each response (a remote host's latency)")
    parser.add_argument("--validators", action="store_true",
                        help="send ETag and Last-Modified; answer 304 to matching validators")
    args = parser.parse_args(argv)
    files = {}
    for path in sorted(Path(args.dir).iterdir()):
        if path.is_file():
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files[path.name] = (path.read_bytes(), ctype)
    handler = make_handler(files, args.latency_ms / 1000, args.validators)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    server.request_queue_size = 64
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
