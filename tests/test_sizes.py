"""schemas/sizes.py: the sizes an upload may ask for, and why others are refused."""
from __future__ import annotations

import pytest

from schemas.sizes import parse_sizes, size_column


def test_sizes_are_read_in_order():
    assert parse_sizes("thumb=200, medium = 800,x-l_2=4096") == {
        "thumb": 200, "medium": 800, "x-l_2": 4096}
    assert parse_sizes("") == {} and parse_sizes(None) == {}
    assert size_column("thumb") == "Output Image Urls (thumb)"


@pytest.mark.parametrize("text,words", [
    ("thumb", "not name=pixels"),
    ("thumb=", "not name=pixels"),
    ("Thumb=200", "lowercase"),
    ("a b=200", "lowercase"),
    ("thumb=200,thumb=300", "given twice"),
    ("thumb=15", "from 16 to 4096"),
    ("thumb=4097", "from 16 to 4096"),
    ("thumb=2e2", "from 16 to 4096"),
    ("a=20,b=20,c=20,d=20,e=20,f=20", "at most 5"),
])
def test_bad_sizes_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        parse_sizes(text)


def test_full_size_reads_true_or_false_and_needs_a_size_to_be_false():
    from schemas.sizes import parse_full_size
    assert parse_full_size(None, True, {}) is True
    assert parse_full_size(" False ", True, {"t": 100}) is False
    assert parse_full_size("1", False, {}) is True and parse_full_size("no", True, {"t": 9}) is False
    assert parse_full_size("ON", False, {}) is True and parse_full_size("off", True, {"t": 9}) is False
    assert parse_full_size(None, False, {"t": 100}) is False
    with pytest.raises(ValueError, match="true or false") as refused:
        parse_full_size("maybe", True, {"t": 100})
    assert "on/off" in str(refused.value)  # it names every word it takes
    with pytest.raises(ValueError, match="at least one size"):
        parse_full_size("false", True, {})


def test_the_largest_size_is_the_first_of_equal_edges():
    from schemas.sizes import largest_size
    assert largest_size({"a": 200, "b": 400, "c": 400}) == ("b", 400)
    assert largest_size({"t": 16}) == ("t", 16)
