"""How a message quotes what a user sent: cut to EXCERPT characters, so an error about a
100,000-character value is not itself 100,000 characters (problem details, errors.csv).

The one rule for every message that quotes user input: `quoted(value)` where the message
shows it in quotes, `excerpt(value)` where it shows it bare.
"""
from __future__ import annotations

EXCERPT = 60  # characters of a user's value quoted in a message
LISTED = 20  # values of a list quoted in one message


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """`value` as text, cut at `limit` characters with `…` and how long it was."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def quoted(value: object, limit: int = EXCERPT) -> str:
    """`value` in quotes as Python's repr shows a string (escapes included), cut like
    `excerpt`: `'thumb=20…' (100,000 characters)`."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def quoted_list(values: list, limit: int = LISTED) -> str:
    """The first `limit` of `values`, each `quoted`, comma-separated, and how many more."""
    shown = ", ".join(quoted(value) for value in values[:limit])
    return shown + (f" and {len(values) - limit:,} more" if len(values) > limit else "")
