"""The production topology on loopback: every process the Procfile names, each its own process.

`Topology` starts a real `redis-server` (AOF on), moto's S3 server (tests/s3_server.py), the
MongoDB wire stand-in (tests/mongo_wire.py), then the Procfile's processes with the commands
written there: `web` (gunicorn, 2 workers), `worker` twice, `cron` once. Each runs in its own
process group, is stopped by its PID (SIGTERM, then SIGKILL) and writes its log to a file the
test can show. The Procfile is the one process list: docker-compose.yml and the Makefile are
checked against it (tests/test_topology.py), and this harness runs what it says.

Timing settings are shortened (sweeper, stall threshold, heartbeats, retry schedules) so a
fault plays out in seconds; each is a setting the service reads, not a test hook.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
import psutil
import pymongo
import redis
import requests

from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Seconds, kept short so each fault resolves quickly (production defaults in infra/settings.py).
FAST_TIMINGS = {
    "STALL_TIMEOUT_S": "3", "SWEEP_INTERVAL_S": "1", "JOB_HEARTBEAT_S": "1",
    "RQ_MAINTENANCE_INTERVAL_S": "5", "JOB_RETRY_SCHEDULE": "1,2,2",
    "WEBHOOK_RETRY_SCHEDULE": "1,2,3,3,3,3,3,3,3,3,3,3", "MONGO_TIMEOUT_S": "2",
    "READY_TIMEOUT_S": "1", "WEBHOOK_TIMEOUT_S": "2", "DOWNLOAD_TIMEOUT_S": "10",
    "STORAGE_RETRY_S": "30",
}


def procfile(path: Path = ROOT / "Procfile") -> dict[str, list[str]]:
    """The Procfile's processes: name -> argv."""
    processes = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, command = line.split(":", 1)
            processes[name.strip()] = shlex.split(command)
    return processes


def _resolve(argv: list[str]) -> list[str]:
    """The Procfile's `python`, `gunicorn`, `rq` from this virtualenv."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    local = BIN / argv[0]
    return [str(local), *argv[1:]] if local.exists() else argv


class Process:
    """One child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None

    def start(self) -> "Process":
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int, group: bool = False) -> None:
        """Send a signal to the process (or its whole group: the process and its children)."""
        if self.alive():
            if group:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)

    def children(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 15) -> None:
        if self.popen is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of its group (a work-horse, RQ's scheduler)
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Topology:
    """Redis, S3, the MongoDB stand-in and the Procfile's processes, all on 127.0.0.1."""

    def __init__(self, workers: int = 2, **settings: str):
        self.dir = Path(tempfile.mkdtemp(prefix="bp-topology-"))
        self.redis = RedisServer(appendonly=True)
        self.s3_port, self.mongo_port, self.port = free_port(), free_port(), free_port()
        base = {k: v for k, v in os.environ.items()
                if k in {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH"}}
        self.env = {
            **base, "PYTHONUNBUFFERED": "1",
            "REDIS_URL": self.redis.url, "S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
            "MONGO_URL": f"mongodb://127.0.0.1:{self.mongo_port}/?directConnection=true",
            "MONGO_DB": "batchpress", "S3_BUCKET": "bp-" + uuid.uuid4().hex[:10],
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "ALLOW_PRIVATE_URLS": "true",
            "WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "HOST": "127.0.0.1", "PORT": str(self.port), "WEB_CONCURRENCY": "2",
            "GUNICORN_THREADS": "8", "PROMETHEUS_MULTIPROC_DIR": str(self.dir / "prometheus"),
            "LOG_LEVEL": "WARNING", "CHUNK_SIZE": "4", "IMAGE_CONCURRENCY": "2",
            **FAST_TIMINGS, **settings,
        }
        self.s3 = Process("s3", [sys.executable, "-m", "tests.s3_server", str(self.s3_port)],
                          self.env, self.dir).start()
        self.mongo = Process("mongo", [sys.executable, "-m", "tests.mongo_wire",
                                       str(self.mongo_port)], self.env, self.dir).start()
        self.processes: list[Process] = []
        try:
            self._wait_port(self.s3_port, self.s3)
            self._wait_port(self.mongo_port, self.mongo)
            commands = procfile()
            self.web = self._add("web", commands["web"])
            self.workers = [self._add(f"worker{n}", commands["worker"]) for n in range(workers)]
            self.cron = self._add("cron", commands["cron"])
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _add(self, name: str, argv: list[str]) -> Process:
        process = Process(name, _resolve(argv), self.env, self.dir).start()
        self.processes.append(process)
        return process

    # --- waiting -------------------------------------------------------------------------------

    @staticmethod
    def _wait_port(port: int, process: Process, timeout: float = 20) -> None:
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{process.name} did not listen on {port}:\n{process.tail()}")

    def wait_ready(self, timeout: float = 40) -> None:
        """Until /readyz answers 200 and every worker process is registered in Redis."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
            try:
                if (requests.get(self.url("/readyz"), timeout=3).status_code == 200
                        and self.registered_workers() >= len(self.workers)):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the topology did not become ready:\n" + self.logs())

    def registered_workers(self) -> int:
        from rq import Worker
        pids = {w.pid for w in self.workers}
        return sum(1 for w in Worker.all(connection=self.redis_client()) if w.pid in pids)

    # --- clients -------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=5)

    def mongo_db(self):
        client = pymongo.MongoClient(self.env["MONGO_URL"], serverSelectionTimeoutMS=5000)
        return client[self.env["MONGO_DB"]]

    def s3_client(self, **options):
        return boto3.client("s3", endpoint_url=self.env["S3_ENDPOINT_URL"],
                            region_name="us-east-1", aws_access_key_id="test",
                            aws_secret_access_key="test", **options)

    # --- operations ----------------------------------------------------------------------------

    def replace(self, process: Process) -> Process:
        """Start a new process with the same command in place of a stopped or killed one."""
        process.stop()
        fresh = Process(process.name, process.argv, self.env, self.dir).start()
        self.processes[self.processes.index(process)] = fresh
        if process in self.workers:
            self.workers[self.workers.index(process)] = fresh
        if process is self.web:
            self.web = fresh
        if process is self.cron:
            self.cron = fresh
        return fresh

    def logs(self, lines: int = 20) -> str:
        every = [self.s3, self.mongo, *self.processes]
        return "\n".join(f"--- {p.name} (pid {p.pid}) ---\n{p.tail(lines)}" for p in every)

    def stop(self) -> None:
        for process in self.processes:  # all at once: each then has its grace period together
            process.signal(signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop()
        for process in (self.mongo, self.s3):
            process.stop()
        self.redis.stop()
