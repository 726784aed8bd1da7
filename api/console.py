"""The web console: `/` (upload and the batches list) and `/batches/{id}` (one batch, live).

The pages are one template filled in by `static/console.js`, which talks to /api/v1 like any
other client; every script and style sheet is served by this app (works offline, no CDN), and
the Content-Security-Policy forbids anything else. Images may come from anywhere: inputs are the
users' own URLs, outputs are wherever PUBLIC_BASE_URL points.
"""
from __future__ import annotations

from flask import Blueprint, current_app, render_template

from api.auth import keys_of

bp = Blueprint("console", __name__)

CSP = ("default-src 'self'; img-src * data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _page(page: str, batch_id: str | None = None):
    html = render_template("console.html", page=page, batch_id=batch_id,
                           auth_required=bool(keys_of(current_app)))
    return html, 200, {"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                       "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@bp.get("/")
def home():
    return _page("home")


@bp.get("/batches/<batch_id>")
def batch_page(batch_id: str):
    return _page("batch", batch_id)
