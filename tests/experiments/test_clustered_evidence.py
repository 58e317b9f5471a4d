"""Requests of one trial share a queue: clustered misses are worth fewer independent requests
(batch means, docs/metrics.md "Correlated requests"); hand-computed values and the laws."""

import pytest

from experiments.analysis.metrics import attainment_evidence, design_effect
from experiments.search.evidence import Sample, pooled_attainment, wilson, z_for
from experiments.search.strategy import CapacitySearch, Probe, SearchSettings

Z = z_for(0.9)


def test_no_estimate_below_two_batches_or_without_misses():
    # 16 requests: two batches of 8, means 7/8 and 1: var = 2 x (1/16)^2, p = 15/16.
    assert design_effect([True] * 7 + [False] + [True] * 8) == pytest.approx(
        2 / 256 * 8 / (15 / 16 * 1 / 16))
    assert design_effect([True] * 14 + [False]) == 1.0  # 15 requests: one batch, no estimate
    assert design_effect([True] * 80) == 1.0  # nothing to cluster
    assert design_effect([False] * 80) == 1.0


def test_evenly_spread_misses_show_no_clustering():
    # 80 requests, 10 batches of 8, one miss in each: every batch mean 7/8, variance 0 -> 1.
    good = ([True] * 7 + [False]) * 10
    assert design_effect(good) == 1.0
    assert attainment_evidence(good) == {"design_effect": 1.0, "effective_n": 80.0}


def test_one_burst_of_misses_by_hand():
    # 80 requests, the 8 misses in two adjacent batches of 8: batch means eight 1s, two 0.5s.
    # p = 0.9; var(ddof=1) = (8 x 0.1^2 + 2 x 0.4^2) / 9 = 0.4 / 9; effect = var x 8 / 0.09.
    good = [True] * 36 + [False] * 8 + [True] * 36
    effect = 0.4 / 9 * 8 / 0.09
    assert design_effect(good) == pytest.approx(effect)
    assert attainment_evidence(good)["effective_n"] == pytest.approx(80 / effect, abs=0.01)


def test_effect_is_capped_at_the_batch_size():
    # Two batches of 8, one all-pass, one all-miss: var = 0.5, effect = 0.5 x 8 / 0.25 = 16 -> 8.
    assert design_effect([True] * 8 + [False] * 8) == 8.0


def test_pooled_interval_uses_effective_sizes_and_keeps_the_share():
    clustered = Sample(72, 80, effective_n=9.0)
    plain = Sample(72, 80)
    a, b = pooled_attainment([clustered], Z), pooled_attainment([plain], Z)
    assert a.mean == b.mean == 0.9 and a.num_total == b.num_total == 80
    assert (a.lo, a.hi) == pytest.approx(wilson(8.1, 9.0, Z))
    assert a.lo < b.lo and a.hi > b.hi and a.effective_n == 9.0 and b.effective_n is None
    both = pooled_attainment([clustered, plain], Z)
    assert both.mean == 0.9 and both.effective_n == 89.0
    assert (both.lo, both.hi) == pytest.approx(wilson(0.9 * 89, 89, Z))


def test_an_effective_n_never_counts_more_than_the_requests():
    assert Sample(10, 10, effective_n=50.0).weight == 10


def test_a_clustered_miss_is_measured_again_not_decided():
    # 100 requests with 30 misses: alone, a decided fail; clustered (worth 4 requests), the
    # interval holds the 90% target, so the search asks for another repetition of that load.
    s = SearchSettings(start_load=8)
    plain, clustered = CapacitySearch(s), CapacitySearch(s)
    for search, sample in ((plain, Sample(70, 100)), (clustered, Sample(70, 100, effective_n=4))):
        probe = search.next_probe()
        search.record(probe, sample)
    assert plain.hi == 8 and plain.next_probe() == Probe(4, 0)
    assert clustered.hi is None and clustered.next_probe() == Probe(8, 1)
