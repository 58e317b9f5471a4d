"""Printing results: one JSON object on stdout for machines, aligned tables for people."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from common.numbers import num


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf: emit null rather than invalid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def print_json(obj: Any) -> None:
    """Exactly one JSON document on stdout."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2, default=str) + "\n")


def fmt(value: Any) -> str:
    """Human formatting: 3 significant digits for floats (`common.numbers.num`), '-' for
    missing or non-finite."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return num(value)


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """A plain aligned text table."""
    if not rows:
        print("(none)")
        return
    columns = columns or list(rows[0])
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)))


def print_pairs(pairs: list[tuple[str, Any]]) -> None:
    """Key/value lines, keys aligned."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {fmt(value)}")
