"""Webhook subscriptions, the delivery log and redelivery (issue 4 fills this in)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")
