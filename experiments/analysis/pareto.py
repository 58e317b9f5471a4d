"""Pareto frontiers, repetition statistics and knees over trial results: pure functions.

Points are `(latency, throughput)` pairs: latency is minimised, throughput maximised.

Tie rules (`frontier`): a point is on the frontier iff no other point has latency <= and
throughput >= with at least one strict, so of two points at equal latency only the higher
throughput one stays, and a point that merely matches a frontier point's throughput at a
higher latency is dropped. Of exact duplicates the first in input order stays;
`trial_frontier` orders trials by `trial_id` first, so the lowest id wins. NaN points never
qualify.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from statistics import fmean

from common.records import TrialConfig, TrialRecord

Point = tuple[float, float]  # (latency, throughput)
# `client_bound`: the load generator lagged, so the point's numbers are not the server's; it
# never enters a frontier (docs/metrics.md, "Client-bound trials"); nor does `drifted`, a point
# whose every repetition ran while the machine's speed had drifted (experiments/run/drift.py).
CLASSES: tuple[str, ...] = ("frontier", "within_noise", "dominated", "client_bound", "drifted")

# Two-sided 95% Student t critical values, t(0.975; df) for df = 1..30.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
_Z95 = 1.959964


def t95(df: int) -> float:
    """Two-sided 95% Student t critical value for `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    # Cornish-Fisher expansion around the normal quantile: < 1e-4 off for df > 30.
    z = _Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def frontier(points: Sequence[Point]) -> list[int]:
    """Indices of the Pareto-optimal `(latency, throughput)` points, sorted by latency."""
    valid = [i for i, (lat, thr) in enumerate(points) if not (math.isnan(lat) or math.isnan(thr))]
    # Equal latency: higher throughput first, then input order, so only that one can pass.
    order = sorted(valid, key=lambda i: (points[i][0], -points[i][1], i))
    kept: list[int] = []
    for i in order:
        if not kept or points[i][1] > points[kept[-1]][1]:
            kept.append(i)
    return kept


def _trial_point(trial: TrialRecord, throughput_key: str, latency_key: str) -> Point | None:
    lat, thr = trial.metrics.get(latency_key), trial.metrics.get(throughput_key)
    if trial.status != "done" or lat is None or thr is None or trial.metrics.get("client_bound") \
            or trial.details.drift_reason:
        return None
    return float(lat), float(thr)


def trial_frontier(
    trials: Sequence[TrialRecord], throughput_key: str, latency_key: str
) -> list[TrialRecord]:
    """Finished trials on the frontier of `throughput_key` against `latency_key`, by latency."""
    ordered = sorted(trials, key=lambda t: t.trial_id)
    pairs = [(t, _trial_point(t, throughput_key, latency_key)) for t in ordered]
    usable = [(t, p) for t, p in pairs if p is not None]
    return [usable[i][0] for i in frontier([p for _, p in usable])]


@dataclass(frozen=True)
class ConfigPoint:
    """The repetitions of one config (x load level) folded into means and 95% intervals.

    ci_low/ci_high are None for a metric with fewer than 2 samples (no interval);
    `interval` then falls back to the mean itself.
    """

    config: TrialConfig  # repetition = 0
    n: int
    mean: dict[str, float | None]
    ci_low: dict[str, float | None]
    ci_high: dict[str, float | None]
    trial_ids: tuple[int, ...]
    saturated: bool
    num_samples: dict[str, int] = field(default_factory=dict)
    client_bound: bool = False  # every repetition's load generator lagged: not on any frontier
    client_bound_reason: str | None = None
    drift_reason: str | None = None  # every repetition ran on a drifted machine (experiments/run/drift.py)

    @property
    def untrusted_reason(self) -> str | None:
        """Why this point is no evidence (not on any frontier, never recommended), or None."""
        return (self.client_bound_reason or "the load generator lagged") if self.client_bound \
            else self.drift_reason

    def interval(self, key: str) -> tuple[float, float] | None:
        """(low, high) 95% bounds of `key`, the mean twice with one sample, None if unmeasured."""
        mean = self.mean.get(key)
        if mean is None:
            return None
        low, high = self.ci_low.get(key), self.ci_high.get(key)
        return (mean, mean) if low is None or high is None else (low, high)

    def point(self, throughput_key: str, latency_key: str) -> Point | None:
        """The `(latency, throughput)` means, None if either is unmeasured."""
        lat, thr = self.mean.get(latency_key), self.mean.get(throughput_key)
        return None if lat is None or thr is None else (lat, thr)


def mean_ci(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean and two-sided 95% Student t interval; no interval (None, None) for one value."""
    mean = fmean(values)
    if len(values) < 2:
        return mean, None, None
    # float sample stdev: statistics.stdev's exact fractions are ~50x slower on big sweeps
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    half = t95(len(values) - 1) * math.sqrt(var) / math.sqrt(len(values))
    return mean, mean - half, mean + half


# Exact types, not isinstance: bool is an int subclass but a flag (e.g. `saturated`), not a
# measurement; and a type lookup keeps folding 10,000 trials x 70 metrics fast.
_NUMBER_TYPES = (int, float)


def _is_number(value: object) -> bool:
    return type(value) in _NUMBER_TYPES


def _fold(config: TrialConfig, reps: list[TrialRecord], only: Sequence[str] | None = None) -> ConfigPoint:
    # A client-bound or drifted repetition is no evidence of the server (as in
    # capacity.sample_of): the point is the clean repetitions', untrusted only when none is clean.
    drifted = [t for t in reps if t.details.drift_reason]
    if drifted and len(drifted) < len(reps):
        reps, drifted = [t for t in reps if not t.details.drift_reason], []
    lagged = [t for t in reps if t.metrics.get("client_bound")]
    reason = (lagged[0].metrics.get("client_bound_reason") or "the load generator lagged") if lagged else None
    if lagged and len(lagged) < len(reps):
        reps, lagged, reason = [t for t in reps if not t.metrics.get("client_bound")], [], None
    keys = only if only is not None else dict.fromkeys(
        itertools.chain.from_iterable(t.metrics for t in reps))
    mean: dict[str, float | None] = {}
    low: dict[str, float | None] = {}
    high: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for key in keys:
        raw = [t.metrics.get(key) for t in reps]
        if any(type(v) is bool for v in raw):
            continue
        values = [float(v) for v in raw if type(v) in _NUMBER_TYPES]
        counts[key] = len(values)
        mean[key], low[key], high[key] = mean_ci(values) if values else (None, None, None)
    saturated = any(bool(t.metrics.get("saturated")) for t in reps)
    ids = tuple(t.trial_id for t in reps)
    return ConfigPoint(config, len(reps), mean, low, high, ids, saturated, counts, bool(lagged), reason,
                       drifted[0].details.drift_reason if drifted else None)


def aggregate(trials: Sequence[TrialRecord], keys: Sequence[str] | None = None) -> list[ConfigPoint]:
    """Fold finished trials of the same config (repetition ignored), ordered by first trial id.

    `keys` limits the folded metrics (all by default): folding the few a decision reads is
    several times faster on big sweeps."""
    groups: dict[TrialConfig, list[TrialRecord]] = {}
    for trial in sorted(trials, key=lambda t: t.trial_id):
        if trial.status == "done":
            groups.setdefault(replace(trial.config, repetition=0), []).append(trial)
    return [_fold(config, reps, keys) for config, reps in groups.items()]


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _near_frontier(p: ConfigPoint, f: ConfigPoint, throughput_key: str, latency_key: str) -> bool:
    lat_p, lat_f = p.interval(latency_key), f.interval(latency_key)
    thr_p, thr_f = p.interval(throughput_key), f.interval(throughput_key)
    assert lat_p and lat_f and thr_p and thr_f  # both points have both means
    return _overlaps(lat_p, lat_f) and _overlaps(thr_p, thr_f)


def classify(
    points: Sequence[ConfigPoint], throughput_key: str, latency_key: str
) -> list[str]:
    """Label each point `frontier`, `within_noise` or `dominated` (see module docstring).

    Frontier: on the frontier of the means. Within noise: dominated by the means, but its
    95% intervals overlap one frontier point's on both axes. A point missing either metric
    is `dominated` (it cannot be placed); a client-bound point is `client_bound` and is left out
    of the frontier. O(n log n + n * frontier size).
    """
    pairs = {i: p.point(throughput_key, latency_key) for i, p in enumerate(points)
             if not p.untrusted_reason}
    usable = {i: pair for i, pair in pairs.items() if pair is not None}
    indices = list(usable)
    on_front = {indices[j] for j in frontier(list(usable.values()))}
    front = [points[i] for i in sorted(on_front)]
    labels = []
    for i, p in enumerate(points):
        if p.client_bound:
            labels.append("client_bound")
        elif p.drift_reason:
            labels.append("drifted")
        elif i in on_front:
            labels.append("frontier")
        elif i in usable and any(_near_frontier(p, f, throughput_key, latency_key) for f in front):
            labels.append("within_noise")
        else:
            labels.append("dominated")
    return labels


def knee(points: Sequence[Point]) -> int | None:
    """Index of the knee of the frontier of `points` (Kneedle-style), None if there are none.

    Both axes are min-max normalised over the frontier; the knee is the frontier point
    furthest above the chord joining the frontier's two ends (max of norm. throughput minus
    norm. latency). When no point lies strictly above it (one or two points, a straight or
    convex frontier) there is no knee to trade at, so the highest-throughput end is returned.
    Ties go to the lower latency.
    """
    front = frontier(points)
    if not front:
        return None
    (lat0, thr0), (lat1, thr1) = points[front[0]], points[front[-1]]
    if len(front) < 3:
        return front[-1]
    # On a frontier of >= 2 points both ranges are > 0: latency and throughput strictly rise.
    gaps = [
        (points[i][1] - thr0) / (thr1 - thr0) - (points[i][0] - lat0) / (lat1 - lat0)
        for i in front
    ]
    best = max(range(len(front)), key=lambda j: (gaps[j], -j))
    return front[best] if gaps[best] > 0 else front[-1]
