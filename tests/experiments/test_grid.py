"""The sweep grid's token-budget axis: which trials it expands to, and what it rejects."""

from __future__ import annotations

import pytest

from experiments.grid import GridError, parse_spec, server_key

BASE = {"policies": ["static", "continuous"], "batch_sizes": [1, 4], "max_wait_ms": [0],
        "concurrency": [2]}


def test_budgets_pair_with_the_continuous_policy_only():
    spec = parse_spec({**BASE, "max_num_batched_tokens": [256, None, 64]})
    assert spec.max_num_batched_tokens == [None, 64, 256]
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
