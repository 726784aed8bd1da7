"""RFC 9457 problem details, the body of every error answer."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = Field(None, description=(
        "What was wrong. A value of the caller's quoted here is cut at 60 characters and says "
        "how long it was (schemas/quoting.py)."))
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
