"""Sending stored webhook deliveries: signed POSTs, retries on a durable schedule, redelivery.

Each attempt is an RQ job on the `webhooks` queue. A failed attempt schedules the next one with
`Queue.enqueue_at` (RQ's scheduler moves it onto the queue when due; it lives in Redis, so it
survives a worker restart) and also writes `next_attempt_at` on the delivery in MongoDB, so
`recover_overdue()` can re-enqueue anything whose job was lost. Attempts are claimed with a lease
in MongoDB, so a duplicated job never sends the same attempt twice.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import requests
from requests_hardened.ip_filter import InvalidIPAddress
from standardwebhooks import Webhook
from urllib3.exceptions import HTTPError

from infra import http, jobs, metrics, stores
from schemas.timestamps import now
from infra.settings import Settings, get_settings
from infra.url_safety import UnsafeUrl, check_url
from schemas.records import FAILED, PENDING, SUCCEEDED, AttemptRecord, DeliveryRecord

log = logging.getLogger(__name__)

EXCERPT_CHARS = 200          # how much of a receiver's answer is kept
RECOVERY_GRACE = timedelta(seconds=60)
JITTER = 0.2                 # each wait is its scheduled value minus up to 20 %
USER_AGENT = "Batchpress-Webhooks/1.0"


def max_attempts(settings: Settings) -> int:
    return len(settings.retry_delays) + 1


def retry_delay(settings: Settings, failed_attempt: int) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) failed, with jitter."""
    base = settings.retry_delays[failed_attempt - 1]
    return base * (1 - random.uniform(0, JITTER))


def recover_overdue() -> int:
    """Re-enqueue pending deliveries whose scheduled job went missing; returns how many.

    Safe to run at any time and from many processes: attempts are claimed in MongoDB.
    """
    # A shorter STALL_TIMEOUT_S shortens the grace too (tests of the process topology).
    grace = min(RECOVERY_GRACE, timedelta(seconds=get_settings().stall_timeout_s))
    found = stores.webhooks().overdue(grace)
    for delivery in found:
        jobs.enqueue_webhook_attempt(delivery.id, delivery.next_attempt_no)
    if found:
        log.warning("re-enqueued %d overdue webhook deliveries", len(found))
    return len(found)


# --- jobs -------------------------------------------------------------------------------------

def attempt(delivery_id: str, number: int) -> dict:
    """Scheduled attempt `number` of a delivery; schedules the next one when it fails."""
    settings = get_settings()
    started = now()
    lease = started + timedelta(seconds=settings.webhook_timeout_s + jobs.WEBHOOK_LEASE_MARGIN_S)
    delivery = stores.webhooks().claim_attempt(delivery_id, number, lease)
    if delivery is None:
        return {"skipped": "not this attempt's turn"}
    url, signing, stop_reason = _target(delivery, manual=False)
    if stop_reason:
        outcome = {"error": stop_reason}
        final = True
    else:
        outcome = send(delivery, url, signing, settings)
        final = outcome.get("status_code") == 410
    ok = _ok(outcome)
    next_at = None
    if ok:
        status = SUCCEEDED
    elif final or number >= max_attempts(settings):
        status = FAILED
    else:
        status = PENDING
        next_at = now() + timedelta(seconds=retry_delay(settings, number))
    record = AttemptRecord.of(at=started, number=number, manual=False, url=url,
                              outcome=outcome, next_attempt_at=next_at)
    stores.webhooks().record_attempt(delivery_id, number, record, status=status,
                                     next_attempt_at=next_at)
    _after(delivery, outcome)
    if next_at is not None:
        try:
            jobs.enqueue_webhook_attempt(delivery_id, number + 1, next_at)
        except Exception:  # noqa: BLE001 - next_attempt_at is stored; recover_overdue picks it up
            log.exception("could not schedule webhook attempt %d of %s", number + 1, delivery_id)
    return {"status": status, **{k: v for k, v in outcome.items() if k != "response"}}


def redeliver(delivery_id: str) -> dict:
    """Send a delivery once more (same webhook-id, fresh timestamp and signature)."""
    settings = get_settings()
    delivery = stores.webhooks().get_delivery(delivery_id, any_owner=True)
    if delivery is None:
        return {"skipped": "no such delivery"}
    started = now()
    url, signing, stop_reason = _target(delivery, manual=True)
    outcome = {"error": stop_reason} if stop_reason else send(delivery, url, signing, settings)
    record = AttemptRecord.of(at=started, number=delivery.attempt_count + 1, manual=True,
                              url=url, outcome=outcome)
    stores.webhooks().record_manual_attempt(delivery_id, record, succeeded=_ok(outcome))
    _after(delivery, outcome)
    return {k: v for k, v in outcome.items() if k != "response"}


def _ok(outcome: dict) -> bool:
    code = outcome.get("status_code")
    return code is not None and 200 <= code < 300


def _after(delivery: DeliveryRecord, outcome: dict) -> None:
    """410 Gone from a subscription's endpoint switches the subscription off."""
    if outcome.get("status_code") == 410 and delivery.subscription_id:
        stores.webhooks().disable_subscription(
            delivery.subscription_id, "the endpoint answered 410 Gone")
        log.info("webhook subscription %s disabled after 410", delivery.subscription_id)


def _target(delivery: DeliveryRecord, *, manual: bool) -> tuple[str | None, list[str], str | None]:
    """(url, signing secrets, reason not to send)."""
    subscription_id = delivery.subscription_id
    if not subscription_id:
        return delivery.url, [get_settings().webhook_secret], None
    subscription = stores.webhooks().get_subscription(subscription_id, any_owner=True)
    if subscription is None:
        return delivery.url, [], "the subscription was deleted"
    if not subscription.enabled and not manual:
        return subscription.url, [], "the subscription is disabled"
    return subscription.url, subscription.signing_secrets(), None


# --- one HTTP request -------------------------------------------------------------------------

def make_session(settings: Settings) -> requests.Session:
    """The hardened session of infra/http.py (address filter with pinning, no proxies, no
    cookies, no .netrc), speaking as the webhook sender. Redirects are never followed."""
    session = http.make_session(settings, pool_size=1, user_agent=USER_AGENT)
    session.headers["Accept"] = "*/*"
    return session


def sign_headers(delivery_id: str, body: str, signing: list[str],
                 at: datetime | None = None) -> dict:
    """Standard Webhooks headers; one `v1,` signature per secret, space-separated."""
    at = at or datetime.now(timezone.utc)
    return {"Content-Type": "application/json", "webhook-id": delivery_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": " ".join(Webhook(s).sign(delivery_id, at, body) for s in signing)}


def send(delivery: DeliveryRecord, url: str, signing: list[str], settings: Settings) -> dict:
    """POST the stored body once; returns {status_code, response, duration_ms} or {error, ...}."""
    timeout = settings.webhook_timeout_s
    timed_out = {"error": f"timed out after {timeout:g} s"}
    began = time.monotonic()
    outcome: dict
    # WEBHOOK_TIMEOUT_S bounds the whole attempt, not each socket read: the deadline's watchdog
    # shuts the socket down when it passes (a receiver dripping its answer would otherwise hold
    # the attempt for as long as it likes).
    with http.deadline(timeout) as watch:
        try:
            check_url(url, allow_private=settings.allow_private_urls, resolve=False)
            headers = sign_headers(delivery.id, delivery.body, signing)
            with make_session(settings) as session, session.post(
                    url, data=delivery.body.encode("utf-8"), headers=headers,
                    timeout=(min(settings.connect_timeout_s, timeout), timeout),
                    allow_redirects=False, stream=True) as response:
                if watch.expired:  # cut off in the headers, which then merely look complete
                    outcome = dict(timed_out)
                else:
                    outcome = {"status_code": response.status_code,
                               "response": _excerpt(response, began + timeout)}
                    if watch.expired:  # the answer was still dripping in at the deadline
                        outcome = dict(timed_out)
                    elif response.is_redirect or 300 <= response.status_code < 400:
                        outcome["error"] = (f"HTTP {response.status_code}: "
                                            "redirects are not followed")
                    elif not 200 <= response.status_code < 300:
                        outcome["error"] = f"HTTP {response.status_code}"
        except UnsafeUrl as error:
            outcome = {"error": f"refused: {error}"}
        except InvalidIPAddress:
            outcome = {"error": "refused: the URL's host resolves to a non-public address"}
        except requests.Timeout:
            outcome = dict(timed_out)
        except requests.ConnectionError as error:
            outcome = dict(timed_out) if watch.expired else {
                "error": http.connection_failure(error, urlsplit(url).hostname or url)}
        except requests.RequestException as error:
            outcome = dict(timed_out) if watch.expired else {
                "error": f"request failed: {http.short_error(error)}"}
    outcome["duration_ms"] = int((time.monotonic() - began) * 1000)
    metrics.webhook_sent(outcome)
    return outcome


def _excerpt(response: requests.Response, deadline: float) -> str | None:
    """The start of the receiver's answer, at most EXCERPT_CHARS; never the whole body."""
    if time.monotonic() >= deadline:
        return None
    try:
        raw = response.raw.read(EXCERPT_CHARS * 4, decode_content=True)
    except (OSError, HTTPError, requests.RequestException):  # the status code is what counts
        return None
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
