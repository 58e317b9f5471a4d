"""Numbers as people read them: three significant digits, and "-" for a value nobody knows.

One rule for every view (dashboard, CLI tables, HTML report, exported YAML), so a metric reads
the same wherever it appears: 68.5274 is "68.5", 5715.17 is "5715", an unknown (None, NaN, inf)
is "-", never "0.000" or "nan".
"""

from __future__ import annotations

import math

UNKNOWN = "-"


def is_known(value: object) -> bool:
    """A real, finite number (bools are not numbers here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def rounded(value: float | None, digits: int = 3) -> float | None:
    """`value` to `digits` significant digits, whole numbers from 100 up (5715.17 -> 5715.0);
    None for an unknown value. What stored and exported documents carry."""
    if not is_known(value):
        return None
    if value == 0 or abs(value) >= 10 ** digits / 10:
        return float(round(value))
    return float(f"{value:.{digits}g}")


def rounded_tree(obj: object, digits: int = 3) -> object:
    """Every float in a JSON-like tree rounded (`rounded`); other values as they are."""
    if isinstance(obj, float):
        return rounded(obj, digits)
    if isinstance(obj, dict):
        return {k: rounded_tree(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded_tree(v, digits) for v in obj]
    return obj


def num(value: object) -> str:
    """Three significant digits, no exponent for everyday sizes: 59, 11.8, 0.512, 1234; "-" for
    None, NaN or inf; ints and strings as they are."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return UNKNOWN
    if not isinstance(value, float):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def readable_rows(rows: list[dict]) -> list[dict]:
    """Table rows with every number as `num` text and every unknown as "-" (a dataframe would
    show 68.5274 and None)."""
    return [{k: v if isinstance(v, (bool, str)) else num(v) for k, v in row.items()} for row in rows]
