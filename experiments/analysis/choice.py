"""Which server config carries the most load within the SLOs, and which configs it ties with.

Pure. `recommend.recommend` turns the choice into the one `Recommendation` that every view
(sentence, table, chart, card, report, export) reads, so they cannot disagree.

The evidence behind each capacity is the one rule of docs/metrics.md ("The evidence rule"): a
load is met when the share of its requests meeting every SLO, pooled over its repetitions, is at
least the profile's attainment target; the interval only says "within noise".

Ranking (docs/metrics.md, "Ties"):

- A config's capacity is a range: [capacity, upper), where upper is the lightest load not met
  (none: never missed); a miss within noise makes the range reach its upper load.
- Candidates carry some load (capacity > 0) and were searched to an answer or a lower bound;
  configs the search pruned or skipped were shown, or predicted, unable to win.
- The leaders have the largest capacity. At one shared load, a leader whose objective (goodput,
  or tokens/s) is below another's beyond noise drops out (a t-test whose spread is the relative
  run-to-run spread pooled over every repeated leader; with no repetitions, a gap over
  SINGLE_RUN_NOISE), except where the knobs could not
  act: realised batches of ~1 measure the same server whatever its knobs, and so do two configs
  differing only in batch cap at no more users than the smaller cap (`caps_idle`).
- The tie: every candidate whose range overlaps a remaining leader's. It is broken by the most
  headroom (the largest capacity, then the largest upper bound, a miss there within noise before
  a clear one), then the simpler config
  (smaller batch, smaller wait, then continuous < static < adaptive: POLICY_ORDER). Noise never breaks a tie:
  the rule reads structure, not the objective's means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import fmean

from common.records import TrialConfig, TrialRecord
from experiments.analysis.grid_capacity import load_of
from experiments.analysis.pareto import t95
from experiments.search.capacity import RULED_OUT, ConfigCapacity, knob_label
from experiments.search.strategy import WITHIN_NOISE

# The tie-break's policy order: continuous batching first (what vLLM, SGLang and TGI run by
# default; at equal capacity it never holds a request behind a running batch), then static,
# then adaptive (it adds run-time decisions of its own).
POLICY_ORDER = ("continuous", "static", "adaptive")
BATCH_ONE = 1.2  # a realised mean batch below this: the batching knobs could not act
# One repetition has no spread: the demo's four configs at 1 user measured 4.05-7.22 req/s
# on one machine, so below this relative gap a single run decides nothing.
SINGLE_RUN_NOISE = 0.10


@dataclass(frozen=True)
class AtCapacity:
    """What a config measured at its capacity load, over its repetitions there."""

    values: tuple[float, ...]  # the objective metric per repetition
    mean_batch: float | None  # realised mean batch size, averaged over repetitions
    trials: tuple[TrialRecord, ...]


@dataclass(frozen=True)
class Choice:
    """The winner, the configs it ties with, and why the ones at the same load fell out."""

    winner: ConfigCapacity | None
    tie_with: tuple[ConfigCapacity, ...] = ()
    knobs_idle: bool = False  # every leader ran batches of ~1 at the capacity load
    caps_idle: bool = False  # the winner's tie is only configs whose batch cap could not bind
    separated: tuple[ConfigCapacity, ...] = ()  # same capacity, objective lower beyond noise


def at_capacity(cap: ConfigCapacity, trials: Sequence[TrialRecord], key: str) -> AtCapacity:
    """The finished trials of `cap`'s config at its capacity load, and what they measured."""
    label = knob_label(cap.config)
    mine = tuple(t for t in trials if t.status == "done" and knob_label(t.config) == label
                 and load_of(t.config)[0] == cap.capacity.capacity)
    values = tuple(float(v) for t in mine if (v := t.metrics.get(key)) is not None)
    if not mine and cap.value_at_capacity is not None:  # no trials given: the reading's mean
        values = (cap.value_at_capacity,)
    batches = [float(b) for t in mine if (b := t.metrics.get("mean_batch_size")) is not None]
    return AtCapacity(values, fmean(batches) if batches else None, mine)


def capacity_range(cap: ConfigCapacity) -> tuple[float, float, bool]:
    """(low, high, high is included): where the config's true capacity may lie."""
    c = cap.capacity
    high = math.inf if c.upper is None else c.upper
    return c.capacity, high, c.status == WITHIN_NOISE and c.upper is not None


def ranges_overlap(a: ConfigCapacity, b: ConfigCapacity) -> bool:
    """Whether two configs' capacities may be equal given what was measured."""
    (alo, ahi, ainc), (blo, bhi, binc) = capacity_range(a), capacity_range(b)
    a_reaches_b = blo < ahi or (ainc and blo <= ahi)
    b_reaches_a = alo < bhi or (binc and alo <= bhi)
    return a_reaches_b and b_reaches_a


def relative_spread(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The run-to-run spread of one repetition as a share of its config's mean, pooled over
    every config with 2+ repetitions (one machine, one load: the same noise hits them all), and
    its degrees of freedom; (SINGLE_RUN_NOISE, 0) when no config was repeated."""
    squares, df = 0.0, 0
    for values in groups:
        m = fmean(values) if values else 0.0
        if len(values) >= 2 and m > 0:
            squares += sum((v / m - 1) ** 2 for v in values)
            df += len(values) - 1
    return (math.sqrt(squares / df), df) if df else (SINGLE_RUN_NOISE, 0)


def worse_beyond_noise(mine: Sequence[float], theirs: Sequence[float], spread: float,
                       df: int) -> bool:
    """`mine` has a lower mean than `theirs` beyond noise: the gap exceeds the 95% two-sided
    t bound of the difference of two means whose repetitions spread by `spread` (relative,
    pooled over configs, `df` degrees of freedom); with no repeated config (df = 0), a gap over
    SINGLE_RUN_NOISE of the larger mean."""
    if not mine or not theirs:
        return False
    ma, mb = fmean(mine), fmean(theirs)
    if df == 0:
        return mb - ma > SINGLE_RUN_NOISE * abs(mb)
    se = spread * math.sqrt(ma**2 / len(mine) + mb**2 / len(theirs))
    return mb - ma > t95(df) * se


def simplicity(config: TrialConfig) -> tuple:
    """Sort key: the simpler config first (smaller batch, smaller wait, POLICY_ORDER)."""
    policy = POLICY_ORDER.index(config.policy) if config.policy in POLICY_ORDER else len(POLICY_ORDER)
    return (config.batch_size, config.max_wait_ms, policy, config.replicas, knob_label(config))


def headroom(cap: ConfigCapacity) -> tuple:
    """Sort key: the most headroom first: the largest capacity, then the largest upper bound,
    then a miss there within noise before a clear one (it came closer to carrying it)."""
    low, high, reaches = capacity_range(cap)
    return (-low, -high, not reaches)


def caps_idle(a: ConfigCapacity, b: ConfigCapacity) -> bool:
    """Whether two configs ran the same server at their shared closed-loop load: they differ
    only in the batch cap, and no more users than the smaller cap ever waited (b4 and b16 at 2
    users): whatever their objectives measured, the gap is noise."""
    load = a.capacity.capacity  # leaders share it
    same = replace(a.config, batch_size=b.config.batch_size) == b.config
    return same and a.unit == "users" and load <= min(a.config.batch_size, b.config.batch_size)


def choose(capacities: Sequence[ConfigCapacity], trials: Sequence[TrialRecord], key: str) -> Choice:
    """The winner and its tie (see the module docstring)."""
    candidates = [c for c in capacities
                  if c.capacity.capacity > 0 and c.capacity.status not in RULED_OUT]
    if not candidates:
        return Choice(None)
    top = max(c.capacity.capacity for c in candidates)
    leaders = [c for c in candidates if c.capacity.capacity == top]
    measured = {knob_label(c.config): at_capacity(c, trials, key) for c in leaders}
    batches = [m.mean_batch for m in measured.values()]
    idle = all(b is not None and b < BATCH_ONE for b in batches)
    separated: list[ConfigCapacity] = []
    if not idle:
        spread, df = relative_spread([m.values for m in measured.values()])
        for c in leaders:
            mine = measured[knob_label(c.config)].values
            if any(worse_beyond_noise(mine, measured[knob_label(o.config)].values, spread, df)
                   for o in leaders if o is not c and not caps_idle(c, o)):
                separated.append(c)
    kept = [c for c in leaders if c not in separated]
    tied = [c for c in candidates if c not in separated
            and (c in kept or any(ranges_overlap(c, k) for k in kept))]
    ordered = sorted(tied, key=lambda c: (*headroom(c), *simplicity(c.config)))
    caps = len(ordered) > 1 and all(caps_idle(ordered[0], c) for c in ordered[1:])
    return Choice(ordered[0], tuple(ordered[1:]), idle and len(leaders) > 1, caps, tuple(separated))


def deployed(cap: ConfigCapacity, trials: Sequence[TrialRecord]) -> TrialConfig:
    """The winner's config at its capacity load, as a stored trial ran it (repetition 0)."""
    label = knob_label(cap.config)
    for t in sorted(trials, key=lambda t: t.trial_id):
        if knob_label(t.config) == label and load_of(t.config)[0] == cap.capacity.capacity:
            return replace(t.config, repetition=0)
    return cap.config
