"""The Flask application factory: settings, blueprints, error handlers, start-up checks."""
from __future__ import annotations

import logging

from flask import Flask, current_app

from infra.settings import Settings, get_settings, startup_warnings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, prepare_stores: bool = True) -> Flask:
    """Build the app; `prepare_stores` creates indexes and the bucket (skipped when unreachable)."""
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1024 * 1024  # form overhead
    app.json.sort_keys = False

    from api import (archive, auth, batches, console, control, cors, dashboard, errors,
                     event_tokens, files, health, openapi, query_params, rate_limits,
                     request_hooks, webhooks)
    from infra import logging_setup
    logging_setup.configure(settings)
    for warning in startup_warnings(settings):
        log.warning(warning)
    errors.register(app)
    request_hooks.register(app)  # first: every later hook and error has the request id
    cors.register(app, settings)
    auth.register(app, settings)
    event_tokens.register(app)
    rate_limits.register(app, settings)
    query_params.register(app)
    dashboard.register(app, settings)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(control.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(archive.bp)
    app.register_blueprint(console.bp)
    if settings.embedded:
        app.register_blueprint(files.bp)

    if prepare_stores:
        from infra import storage, stores
        try:
            stores.current().prepare()
        except Exception as error:  # noqa: BLE001 - readiness reports it; the app still starts
            log.warning("could not prepare the %s store at start-up: %s",
                        stores.current().name, error)
        try:
            storage.ensure_bucket()
        except Exception as error:  # noqa: BLE001
            log.warning("could not prepare the S3 bucket at start-up: %s", error)
    return app


def app_settings() -> Settings:
    """The settings of the app serving this request (the ones given to create_app)."""
    return current_app.config["SETTINGS"]
