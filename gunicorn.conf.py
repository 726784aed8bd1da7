"""gunicorn settings for the API (`gunicorn -c gunicorn.conf.py`), every one from the environment.

- PORT (8000), WEB_CONCURRENCY (worker processes; default 2 per CPU, at most 8),
  GUNICORN_THREADS (threads per worker, default 16: each open progress stream, `/events`, holds one),
  GUNICORN_TIMEOUT (60 s without a heartbeat before a stuck worker is restarted),
  GUNICORN_GRACEFUL_TIMEOUT (30 s for in-flight requests after SIGTERM), GUNICORN_KEEPALIVE (5 s),
  GUNICORN_MAX_REQUESTS (0: never recycle workers).
- PROMETHEUS_MULTIPROC_DIR: when set, the directory is emptied at start and each exited worker is
  marked dead, so /metrics adds up the samples of every worker.
- Logs go through the service's JSON handler (gunicorn's own lines included); no access log from
  gunicorn, the app logs one line per request with its request id.
"""
import glob
import multiprocessing
import os

from gunicorn import glogging


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


wsgi_app = "api:create_app()"
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{_int('PORT', 8000)}"
workers = _int("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count(), 8))
worker_class = "gthread"  # threads: server-sent events hold a connection each
threads = _int("GUNICORN_THREADS", 16)
timeout = _int("GUNICORN_TIMEOUT", 60)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
max_requests_jitter = max_requests // 10
preload_app = False  # MongoDB and boto3 clients are made in each worker, never across a fork
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
control_socket_disable = True  # not used here; in a container $HOME may not be writable
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


class JsonLogger(glogging.Logger):
    """gunicorn's error log through the service's JSON handler (one format for every line)."""

    def setup(self, cfg):
        super().setup(cfg)
        from infra import logging_setup
        logging_setup.configure()
        for handler in list(self.error_log.handlers):
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True


logger_class = JsonLogger


def on_starting(server):
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
