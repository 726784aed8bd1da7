"""`make run`: the API and a worker in one process, on the embedded default unless services are set."""
from __future__ import annotations

import logging
import sys
import threading

from werkzeug.serving import make_server

from infra.settings import Settings

SERVICE_NAMES = {"redis": ("Redis", "REDIS_URL"), "mongodb": ("MongoDB", "MONGO_URL"),
                 "s3": ("S3", "S3_ENDPOINT_URL")}


def unreachable_services(settings: Settings) -> list[str]:
    """One phrase per configured service that does not answer, e.g. "MongoDB (MONGO_URL=…): …"."""
    from botocore.exceptions import ClientError

    from api import health
    from infra.logging_setup import redact

    def s3_reachable(timeout: float) -> None:
        try:
            health.check_s3(timeout)
        except ClientError as error:  # it answered: a missing bucket is created at start-up
            if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket"}:
                raise

    checks = {**health.CHECKS, "s3": s3_reachable}
    failures = []
    for key, error in health.run_checks(settings.ready_timeout_s, checks).items():
        if error is not None:
            name, variable = SERVICE_NAMES[key]
            value = getattr(settings, variable.lower())
            failures.append(redact(f"{name} ({variable}={value}) does not answer: {error}"))
    return failures


def own_address(settings: Settings) -> str:
    """Where this process can be reached: localhost when it listens on loopback or everywhere."""
    host = settings.host
    if host in {"0.0.0.0", "::", "127.0.0.1", "::1"}:
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def prepare(settings: Settings) -> Settings:
    """The settings this process runs with: the stand-ins' in embedded mode, and absolute links
    in webhook bodies from the address it serves on. Exits with one line when a service is down."""
    from infra.settings import use_settings

    if settings.embedded:
        from infra import embedded
        settings = embedded.start(settings)
    if not settings.public_api_url:
        settings = settings.model_copy(update={"public_api_url": own_address(settings)})
    use_settings(settings)
    if not settings.embedded:
        from infra.logging_setup import redact
        print(redact(f"Using REDIS_URL={settings.redis_url}, MONGO_URL={settings.mongo_url}, "
                     f"S3_ENDPOINT_URL={settings.s3_endpoint_url}"), flush=True)
        failures = unreachable_services(settings)
        if failures:
            for failure in failures:
                print("Batchpress cannot start: " + failure, file=sys.stderr, flush=True)
            raise SystemExit(1)
    return settings


def main() -> None:
    from infra.settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = prepare(settings)

    from api import create_app
    from worker.image_memory import keep_image_memory
    from worker.runner import (IMAGE_QUEUES, run_worker, start_image_worker,
                               start_webhook_worker)

    app = create_app(settings)
    server = make_server(settings.host, settings.port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"Batchpress is listening on http://{shown}:{settings.port}  (Ctrl-C stops it)",
          flush=True)
    from worker import sweeper
    if settings.embedded:  # its queues start empty: resume what the last run left unfinished
        resumed = sweeper.resume_unfinished()
        if resumed:
            print(f"Resuming {len(resumed)} unfinished batch(es) from the last run", flush=True)
    stop = threading.Event()
    sweeper.start_thread(stop)  # in production the `cron` process runs the sweep (Procfile)
    # Webhooks on a thread of their own: slow receivers never hold batches up.
    start_webhook_worker(with_scheduler=False)
    keep_image_memory(settings.max_pixels_in_flight)
    start_image_worker()  # images of a file being read are processed while it is read
    try:
        # The main thread works the batch and image queues until Ctrl-C.
        # Scheduled jobs move from a thread of this process, so a SIGTERM to its PID stops all
        # of it (RQ's forked scheduler would outlive it).
        run_worker(burst=False, in_process_scheduler=True, scheduler_locks=not settings.embedded,
                   names=IMAGE_QUEUES, service=True)
    finally:
        stop.set()
        server.shutdown()


if __name__ == "__main__":
    main()
