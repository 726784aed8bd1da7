"""The RQ dashboard (rq-dashboard) at /rq, behind HTTP basic auth.

Credentials: `DASHBOARD_USER` / `DASHBOARD_PASSWORD`, or the user name `ADMIN_KEY_NAME`
(default `admin`) with that API key as password. Without either configured the dashboard is not
mounted at all (404), never open. rq-dashboard has no authentication and no CSRF protection of its
own, so an app-level `before_request` guards its blueprint: basic auth on every request, and for
the requests that change something (POST/DELETE: requeue, delete, empty) the browser's `Origin`
or `Referer` must be this very site.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import urlsplit

from flask import Flask, Response, request

from api import auth
from api.errors import problem
from infra import queues
from infra.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "/rq"
BLUEPRINT = "rq_dashboard"
REALM = "Batchpress RQ dashboard"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(),
                               hashlib.sha256(b.encode()).digest())


def _challenge() -> Response:
    return problem(401, "Unauthorized", "the RQ dashboard needs HTTP basic auth",
                   kind="unauthorized",
                   headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"',
                            "Cache-Control": "no-store"})


def _cross_site() -> Response:
    return problem(403, "Forbidden", "a change on the RQ dashboard must come from this site "
                   "(its Origin or Referer)", kind="cross-site-request",
                   headers={"Cache-Control": "no-store"})


def _same_origin() -> bool:
    here = urlsplit(request.host_url)
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    there = urlsplit(source)
    return (there.scheme, there.netloc) == (here.scheme, here.netloc)


def register(app: Flask, settings: Settings) -> bool:
    """Mount the dashboard when credentials are configured; True when it is mounted."""
    keys = auth.keys_of(app)
    admin_name = settings.admin_key_name
    has_admin_key = admin_name in keys.names
    user, password = settings.dashboard_user, settings.dashboard_password
    if bool(user) != bool(password):
        log.warning("only one of DASHBOARD_USER and DASHBOARD_PASSWORD is set: both are needed")
        user = password = None
    if not (user and password) and not has_admin_key:
        log.info("RQ dashboard is off: set DASHBOARD_USER and DASHBOARD_PASSWORD to open /rq")
        return False

    import rq_dashboard
    import rq_dashboard.web

    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url or "redis://embedded.invalid:6379/0"
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 2500)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)
    # rq-dashboard opens a new connection from the URL on every request; hand it the service's
    # own instead (one Redis here, and the embedded default's in-memory one has no URL).
    rq_dashboard.web.from_url = lambda *args, **kwargs: (None, queues.get_redis())
    rq_dashboard.web.setup_rq_connection(app)
    # The very connection the service uses: the embedded default's in-memory Redis included.
    app.redis_conn = queues.get_redis()

    def authorised() -> bool:
        credentials = request.authorization
        if credentials is None or credentials.type != "basic":
            return False
        given_user = credentials.username or ""
        given_password = credentials.password or ""
        ok = False
        if user and password:
            ok = _same(given_user, user) & _same(given_password, password)
        if has_admin_key and keys.key_matches(admin_name, given_password):
            ok = ok or _same(given_user, admin_name)
        return ok

    @app.before_request
    def _guard_dashboard():
        if request.blueprint != BLUEPRINT and not request.path.startswith(PREFIX + "/"):
            return None
        if not authorised():
            return _challenge()
        changes = (request.method not in ("GET", "HEAD", "OPTIONS")
                   or request.path.startswith(PREFIX + "/requeue/"))  # its GET requeues too
        if changes and not _same_origin():
            return _cross_site()
        # Each request uses the service's current connection (it may be re-created after a fork).
        app.redis_conn = queues.get_redis()
        return None

    log.info("RQ dashboard mounted at %s (HTTP basic auth)", PREFIX)
    return True
