"""Stopping the processes a benchmark started: SIGTERM, a grace period, then SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess


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
