"""engine/attention_split.py: which decode rows attend alone, against hand-computed costs."""

from __future__ import annotations

from engine.attention_split import split_long_rows


def test_rows_of_like_lengths_stay_one_batch() -> None:
    # 4 x 100 = 400 read in one batch; the 100-long row alone: 4 x 90 + 100 + 64 = 524.
    assert split_long_rows([100, 90, 95, 92]) == (100, [])


def test_one_long_row_attends_alone() -> None:
    # Batched: 4 x 300 = 1200. The 300 alone: 4 x 10 + 300 + 64 = 404. Two alone: 4 x 9 +
    # (300 + 64) + (10 + 64) = 474. So one.
    assert split_long_rows([10, 300, 9, 8]) == (10, [1])


def test_the_cheapest_number_of_long_rows_is_taken() -> None:
    # Lengths 400, 380, 20, 20, 20, 20 (6 rows): none 2400; one 2280 + 464 = 2744; two
    # 120 + 464 + 444 = 1028; three 120 + 908 + 84 = 1112. So two, longest first.
    assert split_long_rows([20, 400, 20, 380, 20, 20]) == (20, [1, 3])


def test_the_call_cost_decides_a_close_case() -> None:
    # 2 rows of 300 and 100: batched 2 x 300 = 600; the 300 alone 2 x 100 + 300 + call (the
    # batch still reads its first 100 columns). Split only if the call costs < 100.
    assert split_long_rows([300, 100], call_tokens=99) == (100, [0])
    assert split_long_rows([300, 100], call_tokens=100) == (300, [])  # a tie keeps the batch


def test_no_rows_and_one_row() -> None:
    assert split_long_rows([]) == (0, [])
    assert split_long_rows([77]) == (77, [])  # a lone row is its own batch
