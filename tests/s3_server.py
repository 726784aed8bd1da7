"""moto's S3 server as a process of its own, for the multi-process tests (tests/topology.py).

`python -m tests.s3_server PORT` serves S3 on 127.0.0.1:PORT until SIGTERM. SIGUSR1 closes the
port (connections are refused, as when S3 is unreachable), SIGUSR2 opens it again; the objects
stay, since moto keeps them in this process's memory.
"""
from __future__ import annotations

import signal
import sys
import threading
import time

from moto.server import ThreadedMotoServer


class S3Server:
    def __init__(self, port: int):
        self.port = port
        self._server: ThreadedMotoServer | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            deadline = time.monotonic() + 10
            while True:
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                try:
                    server.start()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._server = server

    def stop(self) -> None:
        with self._lock:
            if self._server is None:
                return
            self._server.stop()
            self._server._server.server_close()  # refuse connections, not queue them
            self._server = None


def main(argv: list[str]) -> None:
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = S3Server(int(argv[1]))
    server.start()
    print(f"s3_server listening on 127.0.0.1:{server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=server.stop).start())
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=server.start).start())
    while not stop.wait(0.5):
        pass
    server.stop()


if __name__ == "__main__":
    main(sys.argv)
