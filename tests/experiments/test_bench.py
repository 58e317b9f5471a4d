"""`tradeoff bench` on the lean path: the raw loop runs the engine's own forward."""

from __future__ import annotations

import pytest
import torch

from engine.threads import engine_num_threads
from experiments.bench import BenchWorkload, run_bench

pytestmark = pytest.mark.slow  # loads builtin:tiny


@pytest.fixture()
def keep_threads():
    num_threads = torch.get_num_threads()
    yield
    torch.set_num_threads(num_threads)


def test_bench_reports_the_forward_and_the_threads_it_ran_with(keep_threads) -> None:
    w = BenchWorkload(num_requests=4, min_prompt=4, max_prompt=8, short_output=2, long_output=6,
                      long_fraction=0.25, equal_prompt=6, equal_output=3, batch_size=2)
    result = run_bench("builtin:tiny", "cpu", w, repeats=1, decode_batches=[1, 2], num_threads=1)
    assert result["forward"] == "lean" and result["num_threads"] == 1 == torch.get_num_threads()
    assert result["engine_vs_raw"] > 0 and result["continuous_vs_static"] > 0
    # outputs 2, 2, 2 and 6 tokens at batch 2: static runs each batch to its longest, continuous
    # refills a freed slot at once, so it never takes more engine steps
    steps = result["steps"]
    assert steps["continuous"] <= steps["static"]
    assert result["continuous_vs_static_steps"] == steps["static"] / steps["continuous"]
    assert set(result["decode_tok_s"]) == {"1", "2"}


def test_the_engine_leaves_a_core_to_the_client() -> None:
    assert engine_num_threads(2) == 1 and engine_num_threads(16) == 15 and engine_num_threads(1) == 1
    assert engine_num_threads(8, is_sharing_cores=False) == 8
