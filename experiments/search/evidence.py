"""Evidence at one load: a repetition's sample, the pooled attainment and its Wilson interval,
and the chance that more repetitions decide it or reverse its verdict (the futility stop). Pure functions; the
capacity search (strategy.py) and every view judge loads with them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

# Repeat an undecided load only while the repetitions left have at least this chance of deciding
# it (conditional power at its pooled share so far; group-sequential tests stop for futility at
# 10-20%) or of reversing its verdict (a share near the target: more evidence steadies it). At
# 0.9375 over 15 effective requests (a 32-request trial, misses in runs) two more repetitions
# decide with ~11% and reverse with ~10%: the load is judged now. At 0.896 they reverse with ~45%.
FUTILITY_POWER = 0.2


@dataclass(frozen=True)
class Sample:
    """One repetition at one load: how many measured requests met every SLO, of how many."""

    num_good: int
    num_total: int
    is_valid: bool = True  # False: not capacity evidence (client-bound, failed trial)
    reason: str | None = None  # why it is not valid
    # Open loop, the queue kept growing: the load is beyond what the config serves, whatever
    # this short trial's attainment says (it would fall the longer the trial ran).
    saturated: bool = False
    # Requests of one trial share a queue: what they are worth as independent requests
    # (metrics.design_effect); None: num_total.
    effective_n: float | None = None

    @property
    def weight(self) -> float:
        """The sample's worth in independent requests."""
        return self.num_total if self.effective_n is None else min(self.effective_n, self.num_total)


@dataclass(frozen=True)
class Attainment:
    """Pooled SLO attainment at one load and its confidence interval."""

    mean: float
    lo: float
    hi: float
    num_total: int
    effective_n: float | None = None  # the interval's n: num_total discounted for clustering


def wilson(num_good: float, num_total: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sensible at 0 and 1, unlike Wald's);
    `num_total` may be an effective (fractional) sample size."""
    if num_total <= 0:
        return 0.0, 1.0
    p, n = num_good / num_total, num_total
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - margin), min(1.0, center + margin)


def pooled_attainment(samples: list[Sample], z: float) -> Attainment:
    """Attainment over every valid sample at one load: the pooled share of requests, its
    interval over the samples' effective sizes (clustered misses count for fewer requests)."""
    valid = [s for s in samples if s.is_valid]
    good = sum(s.num_good for s in valid)
    total = sum(s.num_total for s in valid)
    mean = good / total if total else 0.0
    weight = sum(s.weight for s in valid)
    lo, hi = wilson(mean * weight, weight, z)
    return Attainment(mean, lo, hi, total, None if weight == total else round(weight, 2))


def is_futile(share: float, done: float, left: float, target: float, z: float) -> bool:
    """Whether `left` more requests (effective) are not worth measuring at a load whose pooled
    share is `share` over `done`: they would likely neither decide it nor reverse its verdict
    (each chance below FUTILITY_POWER, the true share taken to be `share`)."""
    return (decide_chance(share, done, left, target, z) < FUTILITY_POWER
            and flip_chance(share, done, left, target) < FUTILITY_POWER)


def decide_chance(share: float, done: float, left: float, target: float, z: float) -> float:
    """Conditional power: the chance that `left` more requests (effective), drawn at `share`,
    leave the pooled interval over done + left wholly on one side of `target` (normal
    approximation of the new requests' share)."""
    total = done + left
    to_pass = _edge_share(lambda p: wilson(p * total, total, z)[0] >= target, rising=True)
    to_fail = _edge_share(lambda p: wilson(p * total, total, z)[1] < target, rising=False)
    return (_reach_chance(share, done, left, to_pass, above=True)
            + _reach_chance(share, done, left, to_fail, above=False))


def flip_chance(share: float, done: float, left: float, target: float) -> float:
    """The chance that `left` more requests drawn at `share` move the pooled share to the other
    side of `target`, reversing the evidence rule's verdict (met <-> missed)."""
    return _reach_chance(share, done, left, target, above=share < target)


def _reach_chance(share: float, done: float, left: float, edge: float | None, above: bool) -> float:
    """The chance that the pooled share over done + left ends at or above `edge` (above) or at
    or below it, the new requests' share ~ Normal(share, share (1 - share) / left)."""
    if edge is None or left <= 0:
        return 0.0
    needed = (edge * (done + left) - share * done) / left  # the new requests' share that reaches it
    sd = math.sqrt(share * (1 - share) / left)
    if sd == 0:
        return float(share >= needed if above else share <= needed)
    cdf = NormalDist(share, sd).cdf(needed)
    return 1 - cdf if above else cdf


def _edge_share(holds: Callable[[float], bool], rising: bool) -> float | None:
    """The pooled share where `holds` starts (rising: the least share from which it holds up to
    1; else the greatest up to which it holds from 0); None when it holds nowhere."""
    if not holds(1.0 if rising else 0.0):
        return None
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if holds(mid) == rising:
            hi = mid
        else:
            lo = mid
    return hi if rising else lo


def decisive_requests(target: float = 0.9, confidence: float = 0.9) -> int:
    """The fewest requests whose Wilson interval clears `target` when every one passes (25 at
    0.9 and 90% confidence): fewer can never decide a pass on their own."""
    z, n = z_for(confidence), 1
    while wilson(n, n, z)[0] < target:
        n += 1
    return n


def z_for(confidence: float) -> float:
    """Two-sided normal quantile, e.g. 1.645 for 0.90."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)
