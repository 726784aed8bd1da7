"""Quoting a user's value in a message: short values whole, long ones cut and measured."""
from __future__ import annotations

from schemas.quoting import EXCERPT, excerpt, quoted, quoted_list


def test_a_short_value_is_quoted_whole_and_a_long_one_cut_with_its_length():
    assert quoted("thumb=9000") == "'thumb=9000'" and excerpt("http://h/") == "http://h/"
    long = "t" * 100_000
    assert quoted(long) == repr("t" * EXCERPT) + "… (100,000 characters)"
    assert excerpt(long) == "t" * EXCERPT + "… (100,000 characters)"
    assert quoted("a\nb") == "'a\\nb'"  # escapes shown, as repr shows them


def test_a_long_list_names_its_first_values_and_how_many_more():
    assert quoted_list(["a", "b"]) == "'a', 'b'"
    shown = quoted_list([str(i) for i in range(25)])
    assert shown.startswith("'0', '1'") and shown.endswith("'19' and 5 more")
