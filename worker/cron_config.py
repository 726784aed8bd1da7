"""RQ cron configuration: the stall sweeper, and recovery of webhook deliveries whose job was lost.

Run `python -m worker --cron` (or `rq cron -c worker.rq_config worker.cron_config`, which does
not come back by itself after a Redis restart).

One cron process is enough (two are harmless: sweeps claim each batch with a conditional update).
"""
from rq import cron

from infra import queues
from infra.settings import get_settings
from worker.sweeper import run_sweep
from worker.webhook_delivery import recover_overdue

cron.register(run_sweep, queues.BATCHES, interval=get_settings().sweep_interval_s,
              job_timeout=300, result_ttl=3600, failure_ttl=7 * 86400)
cron.register(recover_overdue, queues.WEBHOOKS, interval=min(60, get_settings().sweep_interval_s),
              job_timeout=120, result_ttl=3600,
              failure_ttl=7 * 86400)
