"""Parsing of CLI list options like `--batch-sizes 1,4,16`, with one-line errors."""

from __future__ import annotations

from app.errors import BadInput


def parse_list(option: str, text: str, kind: type) -> list:
    """Split `a,b,c` into values of `kind`; empty items or non-numbers are bad input."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise BadInput(f"{option}: empty value in {text!r}; give a comma-separated list like 1,4,16")
    try:
        return [kind(item) for item in items]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise BadInput(f"{option}: {text!r} is not a list of {noun}; e.g. {option} 1,4,16") from None
