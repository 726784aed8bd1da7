"""`make run`: the API and a worker in one process, on in-memory stand-ins unless services are set."""
from __future__ import annotations

import logging
import threading

from werkzeug.serving import make_server


def main() -> None:
    from infra.settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.embedded:
        from infra import embedded
        embedded.start(settings.port)
    else:
        from infra.logging_setup import redact
        print(redact(f"Using REDIS_URL={settings.redis_url}, MONGO_URL={settings.mongo_url}, "
                     f"S3_ENDPOINT_URL={settings.s3_endpoint_url}"), flush=True)

    from api import create_app
    from worker.runner import run_worker

    app = create_app(settings)
    server = make_server(settings.host, settings.port, app, threaded=True)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"Batchpress is listening on http://{shown}:{settings.port}  (Ctrl-C stops it)",
          flush=True)
    from worker import sweeper
    stop = threading.Event()
    sweeper.start_thread(stop)  # in production `rq cron` runs the sweep (see Procfile)
    try:
        # The main thread works the queues until Ctrl-C.
        run_worker(burst=False, in_process_scheduler=settings.embedded)
    finally:
        stop.set()
        server.shutdown()


if __name__ == "__main__":
    main()
