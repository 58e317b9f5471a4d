"""Pareto frontier, repetition statistics, noise classes and knee on hand-made points."""

from __future__ import annotations

import math
import random

import pytest

from common.records import TrialConfig, TrialRecord
from experiments.analysis.pareto import (
    ConfigPoint,
    aggregate,
    classify,
    frontier,
    knee,
    mean_ci,
    t95,
    trial_frontier,
)

THR, LAT = "output_tokens_per_s", "e2e_ms_p90"


def trial(trial_id: int, batch: int, lat: float | None, thr: float | None, *, rep: int = 0,
          status: str = "done", saturated: bool = False) -> TrialRecord:
    config = TrialConfig("static", batch, 5.0, concurrency=4, repetition=rep)
    metrics = {LAT: lat, THR: thr, "saturated": saturated} if status == "done" else {}
    return TrialRecord(trial_id, 1, config, status, metrics)


def point(lat: float, thr: float, lat_ci: tuple[float, float] | None = None,
          thr_ci: tuple[float, float] | None = None, batch: int = 1) -> ConfigPoint:
    """A ConfigPoint built directly: no interval unless given (as with one repetition)."""
    low = {LAT: lat_ci and lat_ci[0], THR: thr_ci and thr_ci[0]}
    high = {LAT: lat_ci and lat_ci[1], THR: thr_ci and thr_ci[1]}
    n = 1 if lat_ci is None and thr_ci is None else 3
    config = TrialConfig("static", batch, 0.0, concurrency=1)
    return ConfigPoint(config, n, {LAT: lat, THR: thr}, low, high, (batch,), False)


# --- frontier -------------------------------------------------------------------------------


def test_frontier_keeps_non_dominated_points_sorted_by_latency():
    points = [(10, 100), (20, 150), (15, 90), (30, 150), (5, 50)]
    # (15, 90) is beaten by (10, 100); (30, 150) only matches (20, 150)'s throughput later.
    assert frontier(points) == [4, 0, 1]


def test_frontier_equal_latency_keeps_higher_throughput():
    assert frontier([(10, 100), (10, 120), (10, 110)]) == [1]


def test_frontier_exact_duplicates_keep_the_first():
    assert frontier([(10, 100), (5, 10), (10, 100)]) == [1, 0]


def test_frontier_skips_nan_and_handles_empty():
    assert frontier([]) == []
    assert frontier([(math.nan, 5), (1, math.nan), (2, 3)]) == [2]


def _brute_force(points: list[tuple[float, float]]) -> list[int]:
    """The documented rule, O(n^2): beaten by a point no worse on both axes, or its earlier twin."""
    def beats(j: int, i: int) -> bool:
        (lj, tj), (li, ti) = points[j], points[i]
        return lj <= li and tj >= ti and ((lj, tj) != (li, ti) or j < i)
    indices = range(len(points))
    kept = [i for i in indices if not any(beats(j, i) for j in indices if j != i)]
    return sorted(kept, key=lambda i: points[i][0])


def test_frontier_matches_brute_force_on_random_grid_with_ties():
    rng = random.Random(7)
    for _ in range(50):
        points = [(rng.randint(0, 12), rng.randint(0, 12)) for _ in range(40)]
        assert frontier(points) == _brute_force(points)


def test_trial_frontier_uses_trial_id_for_duplicates_and_skips_unusable_trials():
    trials = [
        trial(9, 8, 10.0, 100.0),
        trial(3, 4, 10.0, 100.0),  # exact duplicate of 9, lower id: kept
        trial(5, 2, 5.0, 60.0),
        trial(6, 16, 1.0, 999.0, status="failed"),
        trial(7, 32, None, 500.0),  # latency unmeasured
    ]
    assert [t.trial_id for t in trial_frontier(trials, THR, LAT)] == [5, 3]


# --- repetitions ----------------------------------------------------------------------------


def test_t95_table_and_large_df():
    assert t95(1) == pytest.approx(12.706)
    assert t95(4) == pytest.approx(2.776)
    assert t95(30) == pytest.approx(2.042)
    assert t95(60) == pytest.approx(2.0003, abs=5e-4)
    assert t95(120) == pytest.approx(1.9799, abs=5e-4)
    assert t95(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t95(0)


def test_mean_ci_student_t_and_single_value():
    mean, low, high = mean_ci([10.0, 12.0, 14.0])  # sd 2, n 3
    half = 4.303 * 2 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((12.0, 12.0 - half, 12.0 + half))
    assert mean_ci([7.0]) == (7.0, None, None)


def test_aggregate_groups_repetitions_and_drops_unfinished():
    trials = [
        trial(1, 8, 100.0, 10.0, rep=0),
        trial(2, 8, 120.0, 12.0, rep=1),
        trial(3, 8, 140.0, 14.0, rep=2, saturated=True),
        trial(4, 8, None, None, rep=3, status="failed"),
        trial(5, 16, 200.0, 30.0),
    ]
    first, second = aggregate(trials)
    assert first.config == TrialConfig("static", 8, 5.0, concurrency=4)
    assert (first.n, first.trial_ids, first.saturated) == (3, (1, 2, 3), True)
    assert first.mean[LAT] == pytest.approx(120.0)
    assert first.ci_high[THR] == pytest.approx(12.0 + 4.303 * 2 / math.sqrt(3))
    assert "saturated" not in first.mean  # flags are not averaged
    assert (second.n, second.ci_low[LAT], second.interval(LAT)) == (1, None, (200.0, 200.0))


def test_aggregate_counts_samples_per_metric_when_some_are_missing():
    (only,) = aggregate([trial(1, 8, 100.0, None), trial(2, 8, 120.0, 5.0, rep=1)])
    assert only.num_samples == {LAT: 2, THR: 1}
    assert only.mean[THR] == 5.0 and only.ci_low[THR] is None


# --- classification -------------------------------------------------------------------------


def test_classify_frontier_within_noise_and_dominated():
    points = [
        point(100, 50),  # frontier
        point(200, 100),  # frontier
        point(120, 46, lat_ci=(95, 145), thr_ci=(40, 52)),  # intervals reach (100, 50)
        point(120, 46, lat_ci=(95, 145), thr_ci=(40, 49)),  # throughput interval stops short
        point(300, 40),  # dominated, no interval
    ]
    assert classify(points, THR, LAT) == [
        "frontier", "frontier", "within_noise", "dominated", "dominated",
    ]


def test_classify_noise_needs_overlap_on_both_axes_with_the_same_frontier_point():
    points = [
        point(100, 50, lat_ci=(90, 110), thr_ci=(45, 55)),
        point(200, 100, lat_ci=(190, 210), thr_ci=(95, 105)),
        # Dominated by the second; latency overlaps only it, throughput only the first.
        point(230, 60, lat_ci=(205, 240), thr_ci=(52, 70)),
    ]
    assert classify(points, THR, LAT) == ["frontier", "frontier", "dominated"]


def test_classify_marks_unmeasured_points_dominated():
    unmeasured = ConfigPoint(TrialConfig("static", 2, 0.0, concurrency=1), 1,
                             {LAT: None, THR: 5.0}, {}, {}, (9,), False)
    assert classify([point(1, 1), unmeasured], THR, LAT) == ["frontier", "dominated"]


# --- knee -----------------------------------------------------------------------------------


def test_knee_of_a_concave_frontier():
    # Normalised gaps (thr - lat): 0, .49, .58, .57, .51, 0: the knee is (3, 80).
    points = [(1, 0), (2, 60), (3, 80), (4, 90), (5, 95), (10, 100), (6, 50)]
    assert knee(points) == 2


def test_knee_without_a_bend_takes_the_highest_throughput_end():
    assert knee([(1, 1), (2, 2), (3, 3)]) == 2  # straight line
    assert knee([(1, 1), (2, 1.5), (3, 10)]) == 2  # convex
    assert knee([(1, 1), (5, 9)]) == 1
    assert knee([(1, 1)]) == 0
    assert knee([]) is None


def test_a_lagging_repetition_is_left_out_and_the_point_is_client_bound_only_if_all_lagged():
    from dataclasses import replace

    from common.records import TrialConfig, TrialRecord
    from experiments.analysis.pareto import aggregate

    config = TrialConfig("continuous", 4, 0.0, concurrency=4)

    def rep(i: int, tok_s: float, lagged: bool) -> TrialRecord:
        return TrialRecord(i, 1, replace(config, repetition=i), "done",
                           {"output_tokens_per_s": tok_s, "client_bound": lagged,
                            "client_bound_reason": "send lag" if lagged else None})

    (mixed,) = aggregate([rep(1, 100.0, True), rep(2, 200.0, False), rep(3, 220.0, False)])
    assert not mixed.client_bound and mixed.n == 2 and mixed.mean["output_tokens_per_s"] == 210.0
    (lagging,) = aggregate([rep(1, 100.0, True), rep(2, 120.0, True)])
    assert lagging.client_bound and lagging.client_bound_reason == "send lag" and lagging.n == 2
