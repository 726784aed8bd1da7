"""schemas/csv_format.py rules that need no server."""
from __future__ import annotations

import pytest

from schemas.csv_format import inert_cell


@pytest.mark.parametrize("cell", ["=7", "+3", "-2", "@SUM(A1)", "\t=1", "\r=1"])
def test_cells_that_start_like_a_formula_are_shown_as_text(cell):
    assert inert_cell(cell) == "'" + cell


@pytest.mark.parametrize("cell", ["7", "Mug", "https://h.example/a=b", "", " =7", 12, None])
def test_other_cells_are_kept(cell):
    assert inert_cell(cell) == cell
