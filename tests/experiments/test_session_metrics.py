"""Prefix-cache hit rate and TTFT by turn against hand-computed values."""

from __future__ import annotations

import pytest

from common.records import RequestRecord
from experiments.analysis.metrics import (
    compute_trial_metrics,
    prefix_cache_details,
    prefix_cache_hit_rate,
    ttft_by_turn,
)


def rec(i: int, ttft_s: float, prompt: int = 100, cached: int | None = None, turn: int | None = None,
        error: str | None = None) -> RequestRecord:
    return RequestRecord(i, 0.0, 0.0, None, (ttft_s, ttft_s + 0.01), ttft_s + 0.01, prompt, 2,
                         error=error, session_id=0 if turn else None, turn=turn,
                         num_cached_tokens=cached)


def test_hit_rate_is_cached_over_prompt_tokens_of_requests_that_say() -> None:
    records = [rec(0, 0.1, 100, 30), rec(1, 0.1, 50, 0), rec(2, 0.1, 80, None),
               rec(3, 0.1, 40, 40, error="boom")]
    # (30 + 0) / (100 + 50): the unknown one and the failure are left out.
    assert prefix_cache_hit_rate(records) == pytest.approx(0.2)
    details = prefix_cache_details(records)
    assert details == {"num_cached_tokens": 30, "num_prompt_tokens": 150, "num_reporting": 2,
                       "num_requests": 3, "reason": None}


def test_unknown_hit_rate_is_none_not_zero() -> None:
    records = [rec(0, 0.1), rec(1, 0.2)]
    assert prefix_cache_hit_rate(records) is None
    assert prefix_cache_details(records)["reason"].startswith("the target reported no cached")
    metrics = compute_trial_metrics(records, [], [], None, False)
    assert metrics.prefix_cache_hit_rate is None and "prefix_cache_hit_rate" in metrics.flat()


def test_ttft_by_turn_hand_computed() -> None:
    records = [rec(0, 0.010, turn=1), rec(1, 0.020, turn=1), rec(2, 0.030, turn=1),
               rec(3, 0.100, turn=2), rec(4, 0.300, turn=2), rec(5, 9.0, turn=2, error="x")]
    out = ttft_by_turn(records)
    # Turn 1: 10, 20, 30 ms -> p50 20, p90 at rank 1.8 = 20 + 0.8 x 10 = 28.
    assert out["1"] == pytest.approx({"p50": 20.0, "p90": 28.0, "count": 3})
    # Turn 2: 100, 300 ms (the failure left out) -> p50 200, p90 = 100 + 0.9 x 200 = 280.
    assert out["2"] == pytest.approx({"p50": 200.0, "p90": 280.0, "count": 2})
    assert ttft_by_turn([rec(0, 0.1)]) == {}  # no sessions, no split
