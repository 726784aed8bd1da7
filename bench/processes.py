"""The processes a benchmark starts: started until they say their port, stopped by PID (SIGTERM,
a grace period, then SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

IMAGE_SERVER = Path(__file__).resolve().parent / "imageserver.py"


def start_announcing(argv: list[str], what: str, **popen) -> tuple[subprocess.Popen, int]:
    """Start a process that prints `port N` on stdout once it listens: (the process, N).
    It is stopped again when it does not."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, **popen)
    line = proc.stdout.readline().split()
    if not line or line[0] != "port":
        stop(proc)
        raise RuntimeError(f"{what} did not start")
    return proc, int(line[1])


def start_image_server(corpus: str | os.PathLike, latency_ms: float = 0.0,
                       validators: bool = False) -> tuple[subprocess.Popen, str]:
    """bench/imageserver.py serving `corpus` on loopback: (the process, its base URL)."""
    proc, port = start_announcing(
        [sys.executable, str(IMAGE_SERVER), str(corpus), "--latency-ms", str(latency_ms)]
        + (["--validators"] if validators else []), "the image server")
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """Stop `proc` by its PID if it still runs; kill it when it outlives `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_all(procs: list[subprocess.Popen], grace: float = 30.0) -> None:
    """Stop every process at once (SIGTERM to all, then wait for each), killing one that
    outlives `grace` seconds: RQ workers each finish their current job in parallel."""
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
