"""The sweep grid's token-budget axis: which trials it expands to, and what it rejects."""

from __future__ import annotations

import pytest

from experiments.spec.grid import GridError, parse_spec, server_key

BASE = {"policies": ["static", "continuous"], "batch_sizes": [1, 4], "max_wait_ms": [0],
        "concurrency": [2]}


def test_budgets_pair_with_the_continuous_policy_only():
    spec = parse_spec({**BASE, "max_num_batched_tokens": [256, None, 64]})
    assert spec.knobs.max_num_batched_tokens == [None, 64, 256]
    configs = spec.trial_configs()
    assert spec.num_trials == len(configs) == 2 + 2 * 3  # static x 2 batches; continuous x 2 x 3
    assert {c.max_num_batched_tokens for c in configs if c.policy == "static"} == {None}
    assert sorted((c.batch_size, c.max_num_batched_tokens or 0) for c in configs
                  if c.policy == "continuous") == [(1, 0), (1, 64), (1, 256), (4, 0), (4, 64), (4, 256)]
    assert len({server_key(c) for c in configs}) == len(configs)  # each budget is its own server


def test_default_grid_has_no_budget():
    assert {c.max_num_batched_tokens for c in parse_spec(BASE).trial_configs()} == {None}


@pytest.mark.parametrize("budgets, needle", [
    ([0], ">= 1 or none"),
    ([2], "largest batch size (4)"),
])
def test_bad_budgets_are_rejected(budgets: list, needle: str):
    with pytest.raises(GridError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({**BASE, "max_num_batched_tokens": budgets})


def test_a_budget_needs_the_continuous_policy():
    with pytest.raises(GridError, match="continuous policy"):
        parse_spec({**BASE, "policies": ["static"], "max_num_batched_tokens": [64]})


def test_a_searchs_open_loop_trials_span_min_span_s_of_arrivals():
    from common.records import TrialConfig

    search = parse_spec({"requests": 48, "search": {"load": "rate", "min_span_s": 10}})
    at = TrialConfig("continuous", 8, 0.0, rate=22.0)
    assert search.requests_for(at) == 220  # 48 requests would span 2.2 s: too short to queue
    assert search.requests_for(TrialConfig("continuous", 8, 0.0, rate=2.0)) == 48
    users = TrialConfig("continuous", 8, 0.0, concurrency=8)
    assert search.requests_for(users) == 48  # closed loop: no arrival span to size
    grid = parse_spec({"requests": 48, "rate": [22.0]})
    assert grid.requests_for(at) == 48  # a grid keeps what it was given
