"""docs/settings.md: generated from Settings, and never out of step with it."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from infra.settings import Settings
from infra.settings_doc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_docs_settings_md_is_what_settings_generates():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/settings.md is out of date: run `python -m infra.settings_doc > docs/settings.md`")


def test_a_new_setting_gets_a_row_with_its_variable_default_range_and_docstring():
    class WithMore(Settings):
        polite_delay_s: float = Field(0.5, ge=0, le=60)
        """Pause between two downloads from one host."""

    row = render(WithMore).splitlines()[-1]
    assert row == ("| `POLITE_DELAY_S` | `0.5` | number, 0–60 | "
                   "Pause between two downloads from one host. |")
    with pytest.raises(ValidationError):  # the range shown is the one enforced
        WithMore(_env_file=None, polite_delay_s=61)


def test_a_setting_without_a_docstring_cannot_be_documented_silently():
    class Undocumented(Settings):
        mystery: int = 3

    with pytest.raises(ValueError, match="Settings.mystery has no docstring"):
        render(Undocumented)
