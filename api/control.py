"""Batch control and live status: cancel, retry, server-sent progress (issue 5 fills this in)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("control", __name__, url_prefix="/api/v1/batches")
