"""RQ cron configuration for the stall sweeper.

Run `rq cron -c worker.rq_config worker.cron_config`
(or `rq cron --url "$REDIS_URL" worker.cron_config`).

One cron process is enough (two are harmless: sweeps claim each batch with a conditional update).
"""
from rq import cron

from infra import queues
from worker.sweeper import SweepSettings, run_sweep

cron.register(run_sweep, queues.BATCHES, interval=SweepSettings().sweep_interval_s,
              job_timeout=300, result_ttl=3600, failure_ttl=7 * 86400)
