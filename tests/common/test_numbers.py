"""The one number format: 3 significant digits, "-" for unknown, rounded floats for documents."""

from __future__ import annotations

import math

from common.numbers import num, readable_rows, rounded, rounded_tree


def test_num_keeps_three_significant_digits_and_says_dash_for_unknowns() -> None:
    assert [num(v) for v in (68.5274, 5715.17, 0.51234, 12.0, 0.0, 7)] == \
        ["68.5", "5715", "0.512", "12", "0", "7"]
    assert [num(v) for v in (None, math.nan, math.inf)] == ["-", "-", "-"]


def test_rounded_floats_for_exported_documents() -> None:
    assert [rounded(v) for v in (0.1858212294586137, 64.57821922629353, 5715.172401526977)] == \
        [0.186, 64.6, 5715.0]
    assert rounded(math.nan) is None and rounded(None) is None
    assert rounded_tree({"a": [1.23456, 2], "b": {"c": 9.87654}, "d": "x"}) == \
        {"a": [1.23, 2], "b": {"c": 9.88}, "d": "x"}


def test_readable_rows_turn_numbers_into_text_and_unknowns_into_dashes() -> None:
    assert readable_rows([{"config": "b4", "mean": 68.5274, "ci": None, "n": 2, "ok": True}]) == \
        [{"config": "b4", "mean": "68.5", "ci": "-", "n": "2", "ok": True}]
