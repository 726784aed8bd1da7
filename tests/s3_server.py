"""moto's S3 server as a process of its own, for the multi-process tests (tests/topology.py).

`python -m tests.s3_server PORT` serves S3 on 127.0.0.1:PORT until SIGTERM. SIGUSR1 makes S3
unreachable: the port is closed (new connections are refused) and every open connection is cut,
kept-alive ones included. SIGUSR2 opens the port again. The objects stay: moto keeps them in
this process's memory, behind a TCP relay that is what opens and closes.

moto's own server (werkzeug's development server) answers every request with
`Connection: close`, so each S3 call would open a TCP connection, which S3 and MinIO never make
their clients do. Here moto's application is served by waitress, which keeps connections alive
as they do: the workers' CPU per image is then what it is against a real S3.
"""
from __future__ import annotations

import socket
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress import create_server

from tests.servers import serve_until_terminated


class Relay:
    """Forwards 127.0.0.1:port to a backend port; can close and reopen, cutting connections."""

    def __init__(self, port: int, backend: tuple[str, int]):
        self.port, self.backend = port, backend
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._open = self._open, set()
        if listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would not
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.backend)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._open.discard(source)
                self._open.discard(target)


def main(argv: list[str]) -> None:
    moto = create_server(DomainDispatcherApplication(create_backend_app), host="127.0.0.1",
                         port=0, threads=8, ident="moto")
    threading.Thread(target=moto.run, daemon=True).start()
    relay = Relay(int(argv[1]), ("127.0.0.1", moto.effective_port))
    relay.start()
    print(f"s3_server listening on 127.0.0.1:{relay.port}", flush=True)
    serve_until_terminated(relay)
    moto.close()


if __name__ == "__main__":
    main(sys.argv)
