"""(b) of the benchmark: the corpus through the whole service, with every outside part real.

Processes (each its own PID, each one's CPU seconds reported):

- image server: bench/imageserver.py serving the corpus over loopback HTTP (TCP_NODELAY).
- redis-server: started on a free port, stopped by PID (tests/servers.RedisServer).
- moto: `python -m moto.server`, S3 over HTTP in a process of its own (its own GIL, but it
  shares the machine's cores with everything else: its CPU is counted).
- the service, with `workers` > 0 (`make bench`'s default: one per core): this file's `child`
  command is the API (werkzeug, threaded) and `workers` worker processes (this file's `worker`
  command: one RQ worker each on the batch and image queues, as in production), all sharing one
  SQLite file, the stores' SQLite implementation.
- the service, with `workers` 0: the API in a thread of the `child` and a real RQ SimpleWorker
  in burst mode in its main thread, one process, because MongoDB is mongomock there (in memory,
  in the process), unless MONGO_URL is set (a fresh database, dropped after). Only this shape
  also times each step of the chunk job (it wraps them in-process).

The child uploads a CSV of the corpus URLs, repeated with ?copy=N so that every URL is distinct
(the service fetches a URL once per batch), through POST /api/v1/batches over HTTP, runs the
worker until the queues are empty, and reports: images done, the batch's started_at ->
finished_at, the worker's wall time, its peak RSS, and the CPU seconds each process used while
the worker ran (utime + stime from /proc/<pid>/stat).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import processes  # noqa: E402 - needs ROOT on sys.path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str) -> float:
    """utime + stime of a process (all its threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (nor waiting for I/O) since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLK_TCK


# --------------------------------------------------------------------------- orchestration

class Services:
    """The outside processes: image server, redis-server, moto. Stopped by PID."""

    def __init__(self, corpus: Path, latency_ms: float = 0.0, validators: bool = False):
        from tests.servers import RedisServer, free_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.redis = None
        try:
            images, self.image_base = processes.start_image_server(corpus, latency_ms,
                                                                   validators)
            self.procs["image server"] = images

            self.redis = RedisServer()

            port = free_port()
            self.procs["moto (S3)"] = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.s3_url = f"http://127.0.0.1:{port}"
            _wait_http(self.s3_url + "/moto-api/")
        except BaseException:
            self.stop()
            raise

    def pids(self) -> dict[str, int]:
        pids = {name: p.pid for name, p in self.procs.items()}
        if self.redis is not None:
            pids["redis-server"] = self.redis.process.pid
        return pids

    def env(self, bucket: str) -> dict:
        """The environment of a service process on these services: this machine's, less API
        keys and dashboard credentials, with loopback image URLs allowed."""
        env = dict(os.environ)
        for name in ("API_KEYS", "DASHBOARD_USER", "DASHBOARD_PASSWORD", "PUBLIC_BASE_URL"):
            env.pop(name, None)
        env.update({
            "REDIS_URL": self.redis.url, "S3_ENDPOINT_URL": self.s3_url,
            "S3_BUCKET": bucket, "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            "ALLOW_PRIVATE_URLS": "true", "LOG_LEVEL": "WARNING",
            "WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        })
        return env

    def stop(self) -> None:
        for proc in self.procs.values():
            processes.stop(proc, grace=10)
        if self.redis is not None:
            self.redis.stop()


def _wait_http(url: str, timeout: float = 20.0) -> None:
    import requests
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.1)


def run(corpus: Path, names: list[str], copies: int, *, profile: str | None = None,
        profile_rate: int = 50, native: bool = False, latency_ms: float = 0.0,
        extra_env: dict | None = None, workers: int = 0) -> dict:
    """Start the services, run the child (under py-spy when `profile`), return its report."""
    services = Services(corpus, latency_ms)
    try:
        env = services.env("bench-" + uuid.uuid4().hex[:8])
        env.update({
            "MONGO_URL": os.environ.get("MONGO_URL") or "mongodb://mongomock.invalid",
            "MONGO_DB": "bench_" + uuid.uuid4().hex[:8],
            "BENCH_REAL_MONGO": "1" if os.environ.get("MONGO_URL") else "",
        })
        env.update(extra_env or {})
        spec = {"image_base": services.image_base, "names": names, "copies": copies,
                "pids": services.pids(), "workers": workers}
        command = [sys.executable, str(Path(__file__).resolve()), "child", json.dumps(spec)]
        if profile:
            spy = str(Path(sys.executable).parent / "py-spy")
            command = [spy, "record", "--threads", "-r", str(profile_rate),
                       "-f", "raw", "-o", profile] + (["--native"] if native else []) + [
                       "--"] + command
            spec["pids"]["py-spy"] = -1  # filled in by the child (its parent)
            command[-1] = json.dumps(spec)
        with tempfile.TemporaryFile("w+") as errors:  # start-up warnings, tracebacks
            child = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=errors,
                                   text=True)
            lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
            if child.returncode != 0 or not lines:
                errors.seek(0)
                sys.stderr.write(errors.read()[-5000:])
                raise RuntimeError(f"the service process failed (exit {child.returncode})")
        return json.loads(lines[-1])
    finally:
        services.stop()


def process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its children it has reaped (RQ's work-horses) and its live
    descendants (gunicorn's workers, a work-horse still running)."""
    import psutil
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def production_settings() -> dict[str, str]:
    """The settings tests/topology.Topology takes to run with the service's defaults: the
    production timings (it shortens them for its fault tests) and chunking; and any other
    setting given in this environment (`PER_HOST_CONCURRENCY=16 make bench`), except where
    the services are, which the harness decides."""
    from infra.settings import Settings
    from tests.topology import FAST_TIMINGS
    defaults = Settings()
    settings = {name: str(getattr(defaults, name.lower())) for name in FAST_TIMINGS}
    settings.update(CHUNK_SIZE=str(defaults.chunk_size),
                    IMAGE_CONCURRENCY=str(defaults.image_concurrency),
                    STORAGE_RETRY_S=str(defaults.storage_retry_s))
    settings.update({name: value for name, value in os.environ.items()
                     if name.lower() in Settings.model_fields and name not in _PLACES})
    return settings


# Where the services are and who may call them: the harness's own, never this environment's.
_PLACES = {"REDIS_URL", "MONGO_URL", "MONGO_DB", "S3_ENDPOINT_URL", "S3_BUCKET", "HOST", "PORT",
           "PUBLIC_BASE_URL", "PUBLIC_API_URL", "API_KEYS", "DASHBOARD_USER",
           "DASHBOARD_PASSWORD", "WEBHOOK_SECRET", "BATCHPRESS_HOME"}


def run_topology(corpus: Path, names: list[str], copies: int, *, workers: int,
                 latency_ms: float = 0.0) -> dict:
    """(b) on the production processes: tests/topology.Topology starts what the Procfile names
    (gunicorn, `workers` x `python -m worker`, `python -m worker --cron`) on a real
    redis-server, moto's S3 server (behind its relay) and the MongoDB wire stand-in, each a
    process of its own; the settings are the service's defaults. The CSV is uploaded to
    gunicorn over HTTP; the report is the same as the other shapes'."""
    import requests

    from infra.settings import Settings
    from tests.topology import Topology

    defaults = Settings()
    settings = production_settings()
    images, image_base = processes.start_image_server(corpus, latency_ms)
    topology = None
    try:
        topology = Topology(workers=workers, **settings)
        rows = ["S. No.,Product Name,Input Image Urls"]
        n = 0
        for copy in range(copies):
            for name in names:
                n += 1
                rows.append(f"{n},Product {n},{image_base}/{name}?copy={copy}")
        body = ("\n".join(rows) + "\n").encode()

        watched = {"API (gunicorn)": topology.web.pid, "cron": topology.cron.pid,
                   "MongoDB wire stand-in": topology.mongo.pid, "moto (S3, relay)":
                   topology.s3.pid, "redis-server": topology.redis.process.pid,
                   "image server": images.pid}
        watched.update({f"worker {k + 1}": w.pid for k, w in enumerate(topology.workers)})
        cpu0 = {name: process_tree_cpu(pid) for name, pid in watched.items()}
        machine0 = machine_busy_seconds()
        wall0 = time.perf_counter()
        answer = requests.post(topology.url("/api/v1/batches"), data=body,
                               headers={"Content-Type": "text/csv"}, timeout=60)
        if answer.status_code != 202:
            raise RuntimeError(f"upload refused: {answer.status_code} {answer.text[:300]}")
        batch_url = topology.url(f"/api/v1/batches/{answer.json()['id']}")
        peak = 0.0  # work-horses take their peak with them when reaped: sampled meanwhile
        while True:
            batch = requests.get(batch_url, timeout=30).json()
            peak = max([peak] + [_tree_hwm_mb(w.pid) for w in topology.workers])
            if batch["status"] not in ("queued", "processing"):
                break
            time.sleep(0.1)
        wall = time.perf_counter() - wall0
        wait_workers_idle(topology)  # the last work-horses' CPU, counted once they are reaped
        cpu = {name: process_tree_cpu(pid) - cpu0[name] for name, pid in watched.items()}
        steps = worker_steps(topology.redis_client())
        cpu["other processes"] = max(0.0, machine_busy_seconds() - machine0 - sum(cpu.values()))
    finally:
        if topology is not None:
            topology.stop()
        processes.stop(images)
    from schemas.timestamps import parse_aware
    started, finished = batch.get("started_at"), batch.get("finished_at")
    return {
        "status": batch["status"], "images": batch["images"], "worker_wall_s": wall,
        "batch_s": (parse_aware(finished) - parse_aware(started)).total_seconds()
        if started and finished else None,
        "peak_rss_mb": peak, "cpu_s": cpu, "stages": {}, "worker_steps": steps,
        "mongo": "wire stand-in",
        "workers": workers, "chunk_size": defaults.chunk_size,
        "image_concurrency": defaults.image_concurrency,
    }


def worker_steps(redis_client) -> dict[str, float]:
    """The workers' CPU seconds per step, from the service's own counter
    (`batchpress_worker_cpu_seconds_total{step}`, kept in Redis: infra/metrics.py)."""
    from infra import metrics
    steps = {}
    for field, value in redis_client.hgetall(metrics.REDIS_KEY).items():
        name, labels = metrics.parse_field(field.decode())
        if name == "worker_cpu_seconds_total":
            steps[labels["step"]] = float(value)
    return steps


def wait_workers_idle(topology, timeout: float = 30.0) -> None:
    """Until every worker process is idle again: its last work-horse ended and was reaped (its
    CPU is then in the worker's children's times)."""
    from rq import Worker
    pids = {w.pid for w in topology.workers}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [w.get_state() for w in Worker.all(connection=topology.redis_client())
                  if w.pid in pids]
        if len(states) == len(pids) and all(state == "idle" for state in states):
            return
        time.sleep(0.02)
    raise SystemExit("the workers did not become idle")


def _tree_hwm_mb(pid: int) -> float:
    """The largest peak RSS of a process and its live children (a work-horse)."""
    import psutil
    pids = [pid]
    try:
        pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    peaks = []
    for one in pids:
        try:
            peaks.append(_vm_hwm_mb(one))
        except FileNotFoundError:
            pass
    return max(peaks, default=0.0)


# --------------------------------------------------------------------------- the service process

def child(spec: dict) -> None:
    import logging
    import threading

    import requests
    from werkzeug.serving import make_server

    from infra import db, stores
    from infra.settings import get_settings

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    pids = dict(spec["pids"])
    if "py-spy" in pids:
        pids["py-spy"] = os.getppid()
    settings = get_settings()
    real_mongo = bool(os.environ.get("BENCH_REAL_MONGO"))
    workers = int(spec.get("workers") or 0)
    sqlite_path = None
    if workers:  # worker processes share the stores' SQLite implementation, on one file
        from infra.stores.sqlite import SqliteStores
        sqlite_path = os.path.join(tempfile.mkdtemp(prefix="bench-e2e-"), "e2e.sqlite3")
        stores.use(SqliteStores(sqlite_path))
    elif not real_mongo:
        import mongomock
        db.use_client(mongomock.MongoClient(tz_aware=True))

    from api import create_app
    from worker.runner import make_worker

    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    api = f"http://127.0.0.1:{server.server_port}/api/v1"

    lines = ["S. No.,Product Name,Input Image Urls"]
    n = 0
    for copy in range(spec["copies"]):
        for name in spec["names"]:
            n += 1
            lines.append(f"{n},Product {n},{spec['image_base']}/{name}?copy={copy}")
    body = ("\n".join(lines) + "\n").encode()
    if workers:
        _processes_child(spec, api, body, sqlite_path, workers, pids, settings)
        server.shutdown()
        return
    response = requests.post(f"{api}/batches", data=body, headers={"Content-Type": "text/csv"},
                             timeout=60)
    if response.status_code != 202:
        raise SystemExit(f"upload refused: {response.status_code} {response.text[:300]}")
    batch_id = response.json()["id"]

    stages = _count_stages()
    if os.environ.get("BENCH_SWITCH_INTERVAL"):  # experiment: sys.setswitchinterval(seconds)
        sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
    me = os.getpid()
    watched = {"service (API+worker)": me, **pids}
    cpu0 = {name: cpu_seconds(pid) for name, pid in watched.items()}
    machine0 = machine_busy_seconds()
    wall0 = time.perf_counter()
    make_worker(simple=True).work(burst=True, logging_level="WARNING")
    wall = time.perf_counter() - wall0
    cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in watched.items()}
    stages["RQ between jobs (wall only)"] = [0, 0.0, wall - sum(
        stages.get(name, [0, 0.0, 0.0])[2]
        for name in ("chunk job (all of it)", "parse job (CSV -> MongoDB)"))]
    cpu["other processes"] = max(0.0, machine_busy_seconds() - machine0 - sum(cpu.values()))

    doc = stores.batches().get(batch_id, any_owner=True)
    out = requests.get(f"{api}/batches/{batch_id}", timeout=30).json()
    server.shutdown()
    if real_mongo:
        db.get_client().drop_database(settings.mongo_db)
    report = {
        "status": out["status"], "images": out["images"], "worker_wall_s": wall,
        "batch_s": (doc.finished_at - doc.started_at).total_seconds()
        if doc.finished_at and doc.started_at else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_s": cpu, "stages": stages, "mongo": "real" if real_mongo else "mongomock",
        "chunk_size": settings.chunk_size, "image_concurrency": settings.image_concurrency,
    }
    print(json.dumps(report), flush=True)


def _processes_child(spec: dict, api: str, body: bytes, sqlite_path: str, workers: int,
                     pids: dict, settings) -> None:
    """The production shape: `workers` worker processes (one per core by default), each one RQ
    worker on the batch and image queues with its chunk job's own thread pool for I/O; this
    process is only the API. Runs until the batch is finished, then stops them."""
    import requests

    from infra import stores

    procs = start_workers(sqlite_path, workers, settings.redis_url)
    try:
        watched = {"API process": os.getpid(), **pids}
        watched.update({f"worker {n + 1}": p.pid for n, p in enumerate(procs)})
        cpu0 = {name: cpu_seconds(pid) for name, pid in watched.items()}
        machine0 = machine_busy_seconds()
        wall0 = time.perf_counter()
        response = requests.post(f"{api}/batches", data=body,
                                 headers={"Content-Type": "text/csv"}, timeout=60)
        if response.status_code != 202:
            raise SystemExit(f"upload refused: {response.status_code} {response.text[:300]}")
        batch_id = response.json()["id"]
        while True:
            batch = stores.batches().get(batch_id, any_owner=True)
            if batch.finished:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - wall0
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in watched.items()}
        cpu["other processes"] = max(0.0, machine_busy_seconds() - machine0 - sum(cpu.values()))
        peak = max(_vm_hwm_mb(p.pid) for p in procs)
    finally:
        processes.stop_all(procs)
    report = {
        "status": batch.status.value,
        "images": {"total": batch.images_total, "processed": batch.images_processed,
                   "failed": batch.images_failed},
        "worker_wall_s": wall,
        "batch_s": (batch.finished_at - batch.started_at).total_seconds(),
        "peak_rss_mb": peak, "cpu_s": cpu, "stages": {}, "mongo": "sqlite",
        "workers": workers, "chunk_size": settings.chunk_size,
        "image_concurrency": settings.image_concurrency,
    }
    print(json.dumps(report), flush=True)


def start_workers(sqlite_path: str, count: int, redis_url: str) -> list[subprocess.Popen]:
    """`count` worker processes (this file's `worker` command) on the SQLite file, returned
    once all are registered with RQ (start-up is not measured)."""
    from redis import Redis
    from rq import Worker
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker",
                               sqlite_path]) for _ in range(count)]
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    while len(Worker.all(connection=redis)) < count:
        if time.monotonic() > deadline:
            processes.stop_all(procs)
            raise SystemExit("the worker processes did not start")
        time.sleep(0.05)
    return procs


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_process(sqlite_path: str) -> None:
    """One worker process of `_processes_child`: the batch and image queues until SIGTERM."""
    from infra import stores
    from infra.stores.sqlite import SqliteStores
    from worker.runner import IMAGE_QUEUES, run_worker
    stores.use(SqliteStores(sqlite_path))
    run_worker(names=IMAGE_QUEUES)


def _count_stages() -> dict:
    """Wrap the chunk job's steps to add up the CPU time (time.thread_time) and wall time each
    takes, per call, in the thread that runs it: a measurement of where the service's CPU goes
    that sampling cannot blur (a thread waiting for the GIL or a socket uses no CPU here).
    Returns the dict that fills up: name -> [calls, cpu seconds, wall seconds]."""
    import functools
    import threading

    from infra import metrics, storage, stores
    from worker import chunks

    stats: dict = {}
    lock = threading.Lock()

    def wrap(owner, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)  # RQ names a job's function by __module__ and __qualname__
        def timed(*args, **kwargs):
            cpu, wall = time.thread_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                with lock:
                    entry = stats.setdefault(name, [0, 0.0, 0.0])
                    entry[0] += 1
                    entry[1] += cpu
                    entry[2] += wall
        setattr(owner, attr, timed)

    wrap(chunks, "fetch", "download (requests)")
    wrap(chunks, "compress", "decode + encode (Pillow)")
    wrap(storage, "put_bytes", "S3 put (boto3)")
    wrap(stores.products(), "mark_processed", "store mark_processed")
    wrap(stores.products(), "pending_images", "store pending_images")
    wrap(stores.products(), "start_attempt", "store start_attempt")
    wrap(stores.batches(), "add_image_results", "store add_image_results")
    wrap(metrics, "_incr", "metrics (Redis pipelines)")
    wrap(chunks, "process_chunk", "chunk job (all of it)")
    from worker import tasks
    wrap(tasks, "parse_batch", "parse job (CSV -> MongoDB)")
    return stats


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker_process(sys.argv[2])
    else:
        raise SystemExit("usage: e2e.py child SPEC (started by bench/pipeline.py)")
