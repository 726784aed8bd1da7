"""CORS for /api/v1: only the browser origins named in CORS_ORIGINS, none by default.

The console at `/` is served by the API itself and needs no CORS; this is for pages hosted
elsewhere (a shop's admin) that call the API from the browser. Keys travel as bearer tokens,
never cookies, so credentials mode stays off.
"""
from __future__ import annotations

from flask import Flask
from flask_cors import CORS

from infra.settings import Settings

ALLOWED_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID",
                   "X-Request-ID"]
EXPOSED_HEADERS = ["Location", "Idempotent-Replayed", "X-Request-ID", "Content-Disposition",
                   "Retry-After"]


def register(app: Flask, settings: Settings) -> None:
    origins = settings.cors_origin_list
    if not origins:
        return
    CORS(app, resources={r"/api/v1/*": {"origins": origins}}, allow_headers=ALLOWED_HEADERS,
         expose_headers=EXPOSED_HEADERS, supports_credentials=False, max_age=600,
         methods=["GET", "POST", "PATCH", "DELETE"])
