"""Settings for RQ's command line (`rq cron -c worker.rq_config worker.cron_config`, `rq info`);
imported first by `python -m worker` too.

Importing it sets up the service's JSON logs (with batch and job ids) before RQ would install its
own handler, and hands RQ the Redis URL from the service's settings (REDIS_URL or `.env`).
"""
import logging

from infra import logging_setup
from infra.queues import QUEUE_ORDER
from infra.settings import get_settings, startup_warnings

_settings = get_settings()
logging_setup.configure(_settings)
for _warning in startup_warnings(_settings):
    logging.getLogger("worker").warning(_warning)

REDIS_URL = _settings.redis_url or "redis://localhost:6379/0"
QUEUES = list(QUEUE_ORDER)  # most urgent first
