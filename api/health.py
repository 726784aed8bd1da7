"""Health, readiness and metrics endpoints outside /api/v1 (issue 6 fills this in)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("health", __name__)
