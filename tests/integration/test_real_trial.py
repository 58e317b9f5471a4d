"""A real trial on builtin:tiny on CPU: metrics consistent with each other and with Little's law."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.records import TrialConfig
from engine.config import EngineConfig
from engine.models import reset_peak_memory
from experiments.analysis.metrics import littles_law_concurrency
from experiments.run.trial import run_trial
from experiments.spec.profiles import load_profile
from experiments.targets.local import LocalTarget

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target():
    target = LocalTarget.start(EngineConfig(model="builtin:tiny", device="cpu"))
    yield target
    target.close()


@pytest.mark.parametrize("policy, batch_size, concurrency", [
    ("continuous", 4, 4), ("static", 2, 4), ("continuous", 8, 6)])
def test_closed_loop_obeys_littles_law(target: LocalTarget, tiny_profile: Path, policy: str,
                                       batch_size: int, concurrency: int):
    config = TrialConfig(policy, batch_size, 0.0, concurrency=concurrency)
    result = run_trial(target.engine, config, load_profile(str(tiny_profile)), 32, seed=1, slos=[],
                       **target.request_kwargs(), **target.memory_kwargs())
    m = result.metrics
    assert m.requests_completed == 32 and m.requests_failed == 0
    assert littles_law_concurrency(m) == pytest.approx(concurrency, rel=0.10)
    # the batch never exceeds its limit, and tokens add up across the record
    assert 1 <= m.mean_batch_size <= min(batch_size, concurrency) + 1e-9
    assert sum(r.num_output_tokens for r in result.records) == sum(
        len(r.token_times_s) for r in result.records)
    assert m.ttft_ms.p50 <= m.e2e_ms.p50 and m.queue_wait_ms.mean >= 0
    # Where the OS ignores the peak reset, the trial says "unknown", not the lifetime peak.
    if reset_peak_memory(torch.device("cpu")):
        assert m.peak_memory_mb > 0
    else:
        assert m.peak_memory_mb is None


def test_open_loop_trial_measures_from_scheduled_times(target: LocalTarget, tiny_profile: Path):
    config = TrialConfig("continuous", 8, 0.0, rate=20.0, burstiness=1.0)
    result = run_trial(target.engine, config, load_profile(str(tiny_profile)), 24, seed=2, slos=[],
                       **target.request_kwargs())
    assert result.metrics.requests_completed == 24
    for r in result.records:
        assert r.scheduled_s <= r.sent_s <= r.admitted_s <= r.token_times_s[0] <= r.done_s
