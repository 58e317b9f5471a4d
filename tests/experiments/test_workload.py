"""Pure, seeded workload sampling: lengths per distribution, requests within the context,
open-loop arrivals."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.load.workload import (
    clip_to_context,
    make_requests,
    open_loop_arrivals,
    sample_lengths,
)
from experiments.spec.profiles import (
    ChoiceLength,
    FixedLength,
    LogNormalLength,
    NormalLength,
    UniformLength,
    parse_profile_yaml,
)

PROFILE = parse_profile_yaml("""\
name: t
prompt_tokens: {kind: uniform, min: 4, max: 64}
output_tokens: {kind: choice, values: [2, 40], weights: [3, 1]}
arrival: {mode: closed, concurrency: 2}
objective: max_throughput
""", "t")


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_fixed_and_uniform_lengths() -> None:
    assert sample_lengths(FixedLength(kind="fixed", value=7), 3, rng()) == [7, 7, 7]
    drawn = sample_lengths(UniformLength(kind="uniform", min=3, max=5), 2000, rng())
    assert set(drawn) == {3, 4, 5}  # both ends included


def test_normal_lengths_are_clipped() -> None:
    dist = NormalLength(kind="normal", mean=50, std=40, min=20, max=80)
    drawn = sample_lengths(dist, 5000, rng())
    assert min(drawn) == 20 and max(drawn) == 80
    assert all(isinstance(n, int) for n in drawn)


def test_lognormal_lengths_have_the_requested_mean_and_std() -> None:
    dist = LogNormalLength(kind="lognormal", mean=100, std=50, min=1, max=100_000)
    drawn = np.asarray(sample_lengths(dist, 50_000, rng()))
    assert drawn.mean() == pytest.approx(100, rel=0.02)
    assert drawn.std() == pytest.approx(50, rel=0.05)


def test_choice_lengths_follow_weights() -> None:
    assert set(sample_lengths(ChoiceLength(kind="choice", values=[8, 9], weights=[1, 0]),
                              50, rng())) == {8}
    drawn = sample_lengths(ChoiceLength(kind="choice", values=[8, 512], weights=[9, 1]), 5000, rng())
    assert drawn.count(512) / 5000 == pytest.approx(0.1, abs=0.02)


def test_make_requests_is_seeded_and_avoids_special_ids() -> None:
    a = make_requests(PROFILE, 50, seed=3, vocab_size=10, max_context_tokens=1000, avoid_ids=[0, 9])
    b = make_requests(PROFILE, 50, seed=3, vocab_size=10, max_context_tokens=1000, avoid_ids=[0, 9])
    c = make_requests(PROFILE, 50, seed=4, vocab_size=10, max_context_tokens=1000, avoid_ids=[0, 9])
    assert a == b and a != c
    ids = {t for spec in a for t in spec.prompt_ids}
    assert ids <= set(range(1, 9)) and len(ids) == 8
    assert {len(s.prompt_ids) for s in a} <= set(range(4, 65))
    assert {s.max_new_tokens for s in a} == {2, 40}


def test_lengths_do_not_depend_on_the_vocabulary() -> None:
    small = make_requests(PROFILE, 20, seed=1, vocab_size=10, max_context_tokens=1000, avoid_ids=[])
    big = make_requests(PROFILE, 20, seed=1, vocab_size=5000, max_context_tokens=1000, avoid_ids=[])
    assert [len(s.prompt_ids) for s in small] == [len(s.prompt_ids) for s in big]


def test_requests_are_clipped_to_the_context() -> None:
    specs = make_requests(PROFILE, 50, seed=0, vocab_size=10, max_context_tokens=30, avoid_ids=[])
    assert all(len(s.prompt_ids) + s.max_new_tokens <= 30 for s in specs)
    assert clip_to_context(100, 10, 64) == (54, 10)
    assert clip_to_context(10, 100, 64) == (1, 63)
    assert clip_to_context(10, 10, 64) == (10, 10)


def test_open_loop_arrivals_are_seeded_gamma() -> None:
    arrivals = open_loop_arrivals(rate=4.0, burstiness=1.0, n=20_001, seed=0)
    assert arrivals[0] == 0.0 and arrivals == sorted(arrivals)
    gaps = np.diff(arrivals)
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # Poisson: CV 1
    bursty = np.diff(open_loop_arrivals(rate=4.0, burstiness=0.25, n=20_001, seed=0))
    assert bursty.mean() == pytest.approx(0.25, rel=0.05)
    assert bursty.std() / bursty.mean() == pytest.approx(2.0, rel=0.05)  # CV = 1/sqrt(shape)
    assert open_loop_arrivals(4.0, 1.0, 5, seed=1) == open_loop_arrivals(4.0, 1.0, 5, seed=1)
    assert open_loop_arrivals(4.0, 1.0, 5, seed=1) != open_loop_arrivals(4.0, 1.0, 5, seed=2)
    with pytest.raises(ValueError):
        open_loop_arrivals(0.0, 1.0, 5, seed=0)
