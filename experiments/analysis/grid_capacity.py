"""Capacity read off a load grid: per server config, the largest load level that met the SLOs.

A grid measures fixed load levels, so its reading is coarser than a search's: the capacity is
the largest level tried before the first miss (every lighter level met the attainment target
too), and the true boundary lies somewhere up to the next level, never measured in between.
It answers the same question as a capacity search ("which config carries the most within the
SLOs, and how much") from trials already stored, so a grid's recommendation names a server
config and its capacity rather than a load point that nobody can deploy.

Evidence and pooling follow the search (`capacity.sample_of`, `strategy.pooled_attainment`):
failed and client-bound trials are no evidence, a saturated one is a miss; repetitions at one
level are pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from common.records import TrialConfig, TrialRecord
from experiments.search.capacity import ConfigCapacity, objective_key, sample_of
from experiments.search.evidence import Attainment, pooled_attainment, z_for
from experiments.search.strategy import (
    AT_LIMIT,
    DECIDED,
    INVALID,
    UNDECIDED,
    WITHIN_NOISE,
    Capacity,
    fmt_amount,
)
from experiments.spec.profiles import Profile

CONFIDENCE = 0.9  # the search's default: an interval that straddles the target is "within noise"


def load_of(config: TrialConfig) -> tuple[float, str]:
    """A trial's load level on the grid's axis, and the axis's unit."""
    if config.concurrency is not None:
        return float(config.concurrency), "users"
    if config.speedup is not None:
        return float(config.speedup), "x speed-up"
    return float(config.rate or 0.0), "req/s"


def knobs(config: TrialConfig) -> TrialConfig:
    """The server config a trial measured: no load level, no repetition."""
    return replace(config, concurrency=None, rate=None, speedup=None, burstiness=1.0, repetition=0)


def read_grid(profile: Profile, trials: Sequence[TrialRecord]) -> list[ConfigCapacity]:
    """Each measured server config's capacity read off the grid's load levels, from the SLO
    attainment stored with each trial (the caller checks that the grid had SLOs at all: without
    any, every request "meets" them and attainment is 1)."""
    return read_levels(trials, profile.min_slo_attainment, objective_key(profile))


def read_levels(trials: Sequence[TrialRecord], target: float, key: str) -> list[ConfigCapacity]:
    """`read_grid` given the attainment target and the objective's metric directly."""
    by_config: dict[TrialConfig, dict[float, list[TrialRecord]]] = {}
    unit = "req/s"
    for t in trials:
        load, unit = load_of(t.config)
        by_config.setdefault(knobs(t.config), {}).setdefault(load, []).append(t)
    return [_read_one(config, levels, target, unit, key) for config, levels in by_config.items()]


def _read_one(config: TrialConfig, levels: dict[float, list[TrialRecord]], target: float,
              unit: str, key: str) -> ConfigCapacity:
    z = z_for(CONFIDENCE)
    atts: dict[float, Attainment] = {}
    passed: float | None = None
    for load in sorted(levels):
        samples = [sample_of(t) for t in levels[load]]
        valid = [s for s in samples if s.is_valid]
        if not valid:  # the level has no trustworthy reading: the reading stops here
            why = next((s.reason for s in samples if s.reason), "no finished trial")
            status = UNDECIDED if passed is not None else INVALID
            return _answer(config, passed, None, status,
                           f"no evidence at {_fmt(load, unit)} ({why}); capacity is at least "
                           f"the last level met" if passed is not None
                           else f"no evidence at {_fmt(load, unit)} ({why})",
                           levels, atts, unit, key)
        att = atts[load] = pooled_attainment(valid, z)
        met = (f"met the target up to {_fmt(passed, unit)}; " if passed is not None
               else "missed at the lightest level tried; ")
        if any(s.saturated for s in valid):
            return _answer(config, passed, load, DECIDED,
                           f"{met}the queue kept growing at {_fmt(load, unit)} (saturated; "
                           f"attainment {att.mean:.1%} does not count)", levels, atts, unit, key)
        if att.mean < target:
            noisy = att.lo <= target <= att.hi
            return _answer(config, passed, load, WITHIN_NOISE if noisy else DECIDED,
                           f"{met}attainment {att.mean:.1%} at {_fmt(load, unit)}"
                           + (f" (its {CONFIDENCE:.0%} interval [{att.lo:.1%}, {att.hi:.1%}] "
                              f"holds the {target:g} target: within noise)" if noisy else "")
                           + ("; loads in between were not tried"
                              if passed is not None and _gap(passed, load, unit) else ""),
                           levels, atts, unit, key)
        passed = load
    assert passed is not None  # every level met the target
    return _answer(config, passed, None, AT_LIMIT,
                   f"met the target at every level up to the largest tried "
                   f"({_fmt(passed, unit)}); capacity is at least that", levels, atts, unit, key)


def _answer(config: TrialConfig, passed: float | None, upper: float | None, status: str,
            reason: str, levels: dict[float, list[TrialRecord]], atts: dict[float, Attainment],
            unit: str, key: str) -> ConfigCapacity:
    values = [float(v) for t in levels.get(passed, []) if (v := t.metrics.get(key)) is not None
              and t.status == "done"] if passed is not None else []
    num_trials = sum(len(ts) for ts in levels.values())
    capacity = Capacity(passed or 0.0, upper, status, reason, num_trials, atts)
    return ConfigCapacity(config, capacity, unit, sum(values) / len(values) if values else None)


def _gap(lo: float, hi: float, unit: str) -> bool:
    """Whether a load lies strictly between two levels (users come in whole numbers)."""
    return hi - lo > 1 if unit == "users" else hi > lo


def _fmt(load: float | None, unit: str) -> str:
    return fmt_amount(load or 0.0, unit)
