"""Pick one config for a workload profile from a sweep's trials: pure functions.

With SLOs, the recommendation is a server config at its capacity: the config that carries the
most load within the SLOs, and how much (`choice.choose` over the capacities, read off a grid's
levels by `grid_capacity` or replayed from a search). Whether a load meets the SLOs is decided
by one evidence rule (docs/metrics.md): the share of its requests meeting every SLO, pooled
over its repetitions, against the profile's attainment target; one repetition and several are
judged alike. Configs within noise of the winner are named as a tie (`tie_with`).

Without SLOs: the knee (`pareto.knee`) of the frontier of the objective metric against mean p90
E2E over unsaturated, not client-bound points: the point past which more throughput costs
disproportionately more latency.

Failed and unfinished trials are ignored; client-bound points (the load generator lagged: the
numbers are not the server's) and saturated ones never qualify.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from common.records import LATENCY_METRICS, SLO, STATS, TrialConfig, TrialRecord, config_to_dict
from experiments.analysis.answer import (
    METRIC_NAMES,
    SLORule,
    at_load,
    rules_for,
    sentence,
    why_client_bound,
    why_drifted,
    why_empty,
    why_saturated,
)
from experiments.analysis.choice import at_capacity, choose, deployed
from experiments.analysis.grid_capacity import read_levels
from experiments.analysis.pareto import ConfigPoint, aggregate, knee
from experiments.search.capacity import ConfigCapacity, knob_label
from experiments.search.evidence import Attainment

OBJECTIVES: dict[str, str] = {"max_goodput": "goodput_rps", "max_throughput": "output_tokens_per_s"}
KNEE_LATENCY_KEY = "e2e_ms_p90"
FASTEST_KEY = "output_tokens_per_s"
_THROUGHPUT_NAMES = {
    "goodput_rps": ("goodput", "req/s"),
    "output_tokens_per_s": ("output throughput", "tokens/s"),
    "total_tokens_per_s": ("total throughput", "tokens/s"),
    "requests_per_s": ("request throughput", "req/s"),
}


class SLOCheck(NamedTuple):
    """One SLO against the recommended point's measured value (the mean over repetitions of
    the trials' percentile). The verdict that decides is the pooled attainment (see
    `Recommendation.attainment`); this row shows where the latency stands against the SLO."""

    slo: SLO
    value: float | None  # None: the point did not measure this metric
    passed: bool
    margin_ms: float | None  # max_ms - value: headroom when >= 0, the miss when < 0

    def to_dict(self) -> dict:
        """JSON-ready dict: the SLO's fields plus value, passed and margin_ms."""
        slo = {"metric": self.slo.metric, "percentile": self.slo.percentile}
        return {**slo, "max_ms": self.slo.max_ms, "threshold_ms": self.slo.max_ms,
                "value": self.value, "passed": self.passed, "margin_ms": self.margin_ms}


@dataclass(frozen=True)
class Recommendation:
    """The one answer: the chosen config (or the nearest miss), what it measured, and why.

    With SLOs, `config` is the winning server config at its capacity load, `capacity` its
    capacity answer, `tie_with` the configs within noise of it, `rules` the resolved SLOs."""

    feasible: bool
    objective: str
    config: TrialConfig | None  # repetition 0; None when nothing was measured
    metrics: dict[str, float | None]  # flat means over repetitions
    slo_checks: list[SLOCheck]
    explanation: str
    point: ConfigPoint | None = None  # n, intervals and trial ids behind `metrics`
    nearest_miss: SLOCheck | None = None  # the worst-missed SLO when infeasible
    capacity: ConfigCapacity | None = None
    tie_with: tuple[ConfigCapacity, ...] = ()
    rules: tuple[SLORule, ...] = ()
    attainment: Attainment | None = None  # pooled over the repetitions at the capacity load
    target: float | None = None  # the attainment target it was judged against

    def to_dict(self) -> dict:
        """JSON-ready dict; metrics nested like `tradeoff trial --json`."""
        metrics = nest_metrics(self.metrics)
        if self.point is not None:
            metrics["saturated"] = self.point.saturated
        miss, cap, att = self.nearest_miss, self.capacity, self.attainment
        rules = {r.slo.key: r.to_dict() for r in self.rules}
        slos = [{**rules.get(c.slo.key, {}), **c.to_dict()} for c in self.slo_checks]
        return {
            "feasible": self.feasible, "objective": self.objective,
            "config": None if self.config is None else config_to_dict(self.config),
            "label": None if cap is None else knob_label(cap.config),
            "capacity": None if cap is None else cap.capacity.capacity,
            "upper": None if cap is None else cap.capacity.upper,
            "unit": None if cap is None else cap.unit,
            "status": None if cap is None else cap.capacity.status,
            "decided": None if cap is None else cap.capacity.is_decided,
            "tie_with": [knob_label(c.config) for c in self.tie_with],
            "attainment": None if att is None else {
                "mean": att.mean, "lo": att.lo, "hi": att.hi, "requests": att.num_total,
                "effective_requests": att.effective_n,
                "target": self.target},
            "repetitions": 0 if self.point is None else self.point.n,
            "metrics": metrics, "slos": slos or [r.to_dict() for r in self.rules],
            "nearest_miss": None if miss is None else miss.to_dict(),
            "explanation": self.explanation,
        }


def nest_metrics(flat: dict[str, float | None]) -> dict:
    """Flat `ttft_ms_p90` keys back to `{"ttft_ms": {"p90": ...}}`; None if all stats missing."""
    latency_keys = {f"{m}_{s}" for m in LATENCY_METRICS for s in STATS}
    out: dict = {k: v for k, v in flat.items() if k not in latency_keys}
    for metric in LATENCY_METRICS:
        dist = {stat: flat.get(f"{metric}_{stat}") for stat in STATS}
        out[metric] = None if all(v is None for v in dist.values()) else dist
    return out


def latency_label(key: str) -> str:
    """`ttft_ms_p90` -> `p90 TTFT`."""
    metric, _, stat = key.rpartition("_")
    return f"{stat} {METRIC_NAMES.get(metric, metric)}"


def describe_config(config: TrialConfig) -> str:
    """`continuous batch 16, wait 5 ms at concurrency 8`."""
    knobs = f"{config.policy} batch {config.batch_size}, wait {config.max_wait_ms:g} ms"
    return f"{knobs} {_load(config)}"


def _load(config: TrialConfig) -> str:
    if config.concurrency is not None:
        return f"at concurrency {config.concurrency}"
    if config.speedup is not None:
        return f"replaying the trace at {config.speedup:g}x"
    shape = "Poisson" if config.burstiness == 1 else f"gamma, burstiness {config.burstiness:g}"
    return f"at {config.rate:g} req/s ({shape})"


def _diff(chosen: TrialConfig, other: TrialConfig) -> str:
    # Name only the knobs that differ: "the fastest config (batch 32)".
    changed = [b for a, b in zip(_parts(chosen), _parts(other), strict=True) if a != b]
    return ", ".join(changed) or describe_config(other)


def _parts(c: TrialConfig) -> list[str]:
    return [c.policy, f"batch {c.batch_size}", f"wait {c.max_wait_ms:g} ms", _load(c)]


def fmt_value(value: float) -> str:
    """A number for prose: 1234, 12.3 or 1.23."""
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _pct(new: float, base: float) -> float | None:
    return None if base == 0 else (new - base) / abs(base) * 100


def check_slos(point: ConfigPoint, slos: Sequence[SLO]) -> list[SLOCheck]:
    """Each SLO against the point's mean over repetitions (shown, not deciding: the pooled
    attainment decides). A mean, not an upper t-bound: with two repetitions that bound is huge,
    so loads measured twice would lose to loads measured once."""
    return [_check(point, slo) for slo in slos]


def _check(point: ConfigPoint, slo: SLO) -> SLOCheck:
    value = point.mean.get(slo.key)
    if value is None:
        return SLOCheck(slo, None, False, None)
    return SLOCheck(slo, value, value <= slo.max_ms, slo.max_ms - value)


def _ratio(check: SLOCheck) -> float:
    if check.value is None or check.slo.max_ms <= 0:
        return math.inf
    return check.value / check.slo.max_ms


def _rank(point: ConfigPoint, key: str, latency_key: str) -> tuple:
    # min() over this key: highest objective, then lower latency, batch, wait, first trial.
    latency = point.mean.get(latency_key)
    c = point.config
    return (-(point.mean[key] or 0.0), math.inf if latency is None else latency,
            c.batch_size, c.max_wait_ms, point.trial_ids[0])


def objective_key(objective: str, throughput_key: str | None = None) -> str:
    """The metric an objective maximises, unless `throughput_key` overrides it."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of: {', '.join(OBJECTIVES)}")
    return throughput_key or OBJECTIVES[objective]


def recommend(
    trials: list[TrialRecord], objective: str, slos: list[SLO], throughput_key: str | None = None,
    *, target: float = 0.9, capacities: list[ConfigCapacity] | None = None,
    rules: Sequence[SLORule] | None = None, profile_name: str = "profile",
    subject: str | None = None,
) -> Recommendation:
    """The best config for `objective` under `slos` (see the module docstring for the rules).

    With SLOs: `capacities` (a search's replayed answer) or, by default, the capacity read off
    the trials' load levels, each level judged by its stored SLO attainment against `target`
    (so the trials must have been judged against `slos`: see `queries.rejudge` for what-ifs).
    `rules` say where each threshold came from (default: absolute); `subject` names a server
    whose batching was its own (a bare --target), in place of the placeholder knobs."""
    key = objective_key(objective, throughput_key)
    # Decide on the few metrics the rules read, then fold the chosen config in full.
    wanted = sorted({key, FASTEST_KEY, KNEE_LATENCY_KEY, "slo_attainment", *(s.key for s in slos)})
    measured = [p for p in aggregate(trials, wanted) if p.mean.get(key) is not None]
    trusted = [p for p in measured if not p.untrusted_reason]
    pool = [p for p in trusted if not p.saturated]
    if not measured:
        return _empty(objective, why_empty(trials))
    if not trusted:
        lagged = [p for p in measured if p.client_bound]
        return _empty(objective, why_client_bound(len(measured), lagged[0].untrusted_reason) if lagged
                      else why_drifted(len(measured)))
    if not pool:
        return _empty(objective, why_saturated(len(trusted)))
    if not slos and not capacities:  # no SLOs and no search's answer: the knee
        return _explain_adaptive(_with_all_metrics(_pick_knee(pool, objective, key), trials))
    caps = read_levels(trials, target, key) if capacities is None else capacities
    rules = tuple(rules_for(slos) if rules is None else rules)
    rec = _pick_capacity(trials, caps, pool, objective, key, slos, rules, profile_name, subject)
    return _explain_adaptive(replace(rec, target=target))


def _explain_adaptive(rec: Recommendation) -> Recommendation:
    c = rec.config
    if c is None or c.policy != "adaptive":
        return rec
    return replace(rec, explanation=rec.explanation + (
        f" The adaptive policy sets its batch cap (up to {c.batch_size}) and batching wait (up to "
        f"{c.max_wait_ms:g} ms) at run time from the queue, recent step times and the TTFT/TPOT "
        "SLOs; for servers without such a policy the export gives the nearest fixed config."))


def _with_all_metrics(rec: Recommendation, trials: Sequence[TrialRecord]) -> Recommendation:
    ids = set(rec.point.trial_ids) if rec.point is not None else set()
    if not ids:
        return rec
    full = aggregate([t for t in trials if t.trial_id in ids])[0]
    return replace(rec, metrics=full.mean, point=full)


def _empty(objective: str, explanation: str) -> Recommendation:
    return Recommendation(False, objective, None, {}, [], explanation)


def _pick_capacity(trials: Sequence[TrialRecord], caps: list[ConfigCapacity],
                   pool: list[ConfigPoint], objective: str, key: str, slos: list[SLO],
                   rules: tuple[SLORule, ...], profile_name: str,
                   subject: str | None = None) -> Recommendation:
    choice = choose(caps, trials, key)
    text = sentence(caps, profile_name, trials, key, rules, choice, subject) + "."
    winner = choice.winner
    if winner is None:
        miss = _nearest_miss(pool, objective, key, slos)
        return replace(miss, explanation=f"{text[:-1]}; {miss.explanation}", rules=rules)
    reps = at_capacity(winner, trials, key).trials
    point = aggregate(reps)[0] if reps else None
    att = winner.capacity.attainment.get(winner.capacity.capacity)
    name, unit = _THROUGHPUT_NAMES.get(key, (key, ""))
    measured = "" if point is None else at_load(name, unit, point.mean.get(key), point.n, att)
    return Recommendation(True, objective, deployed(winner, trials),
                          {} if point is None else point.mean,
                          [] if point is None else check_slos(point, slos), text + measured,
                          point, None, winner, choice.tie_with, rules, att)


def _pick_knee(pool: list[ConfigPoint], objective: str, key: str) -> Recommendation:
    lat = KNEE_LATENCY_KEY
    name, unit = _THROUGHPUT_NAMES.get(key, (key, ""))
    placed = [p for p in pool if p.mean.get(lat) is not None]
    if not placed:  # no latency measured at all: nothing to trade against
        chosen = min(pool, key=lambda p: _rank(p, key, lat))
        text = f"{describe_config(chosen.config)} gives the highest {name} (no latency measured)."
        return Recommendation(True, objective, chosen.config, chosen.mean, [], text, chosen)
    # Means are finite here, so the frontier is non-empty and knee() returns an index.
    chosen = placed[knee([(p.mean[lat], p.mean[key]) for p in placed]) or 0]
    head = (f"{describe_config(chosen.config)} is the knee of the {name} vs {latency_label(lat)} "
            f"frontier ({fmt_value(chosen.mean[key])} {unit} at {fmt_value(chosen.mean[lat])} ms)")
    text = f"{head}; {_tail(chosen, placed, key, lat, has_slos=False)}."
    return Recommendation(True, objective, chosen.config, chosen.mean, [], text, chosen)


def _nearest_miss(
    pool: list[ConfigPoint], objective: str, key: str, slos: list[SLO]
) -> Recommendation:
    def badness(p: ConfigPoint) -> tuple:
        return (max(_ratio(c) for c in check_slos(p, slos)), _rank(p, key, slos[0].key))

    miss = min(pool, key=badness)
    checks = check_slos(miss, slos)
    worst = max(checks, key=_ratio)
    if worst.passed:  # every percentile within its SLO on average, yet too few requests met all
        share = miss.mean.get("slo_attainment")
        text = (f"the nearest miss, {describe_config(miss.config)}, met each SLO's percentile on "
                f"average, but only {share or 0.0:.0%} of its requests met every SLO.")
        return Recommendation(False, objective, miss.config, miss.mean, checks, text, miss, worst)
    num_other = sum(not c.passed for c in checks) - 1
    others = f" and {num_other} other SLO{'s' * (num_other > 1)}" if num_other else ""
    text = (f"the nearest miss, {describe_config(miss.config)}, "
            f"{_miss_phrase(miss, worst)}{others}.")
    return Recommendation(False, objective, miss.config, miss.mean, checks, text, miss, worst)


def _miss_phrase(point: ConfigPoint, check: SLOCheck) -> str:
    label = latency_label(check.slo.key)
    if check.value is None:
        return f"did not measure {label} (SLO {fmt_value(check.slo.max_ms)} ms)"
    mean = f", mean of {point.n}" if point.n > 1 else ""
    return (f"misses {label} by {fmt_value(check.value - check.slo.max_ms)} ms "
            f"({fmt_value(check.value)} ms{mean} vs {fmt_value(check.slo.max_ms)} ms)")


def _tail(chosen: ConfigPoint, pool: list[ConfigPoint], key: str, latency_key: str,
          has_slos: bool = True) -> str:
    """What the choice costs versus the fastest and the lowest-latency points.

    Every clause names its subject ("the recommended config", "the fastest config (batch 32)"),
    never "it", so a reader cannot attach a clause to the wrong config."""
    fast_pool = [p for p in pool if p.mean.get(FASTEST_KEY) is not None] or [chosen]
    fastest = min(fast_pool, key=lambda p: _rank(p, FASTEST_KEY, latency_key))
    lowest = min(pool, key=lambda p: _rank_latency(p, key, latency_key))
    if fastest is chosen and lowest is chosen:
        return "the recommended config is also the fastest and the lowest-latency config"
    if fastest is chosen:
        return (f"the recommended config is also the fastest config, and "
                f"{_lowest_clause(chosen, lowest, key, has_slos)}")
    if lowest is chosen:
        return (f"{_fastest_clause(chosen, fastest, latency_key)}, and the recommended config "
                "is also the lowest-latency config")
    if fastest is lowest:  # one other config is both: one subject, both comparisons
        who = f"the fastest and lowest-latency config ({_diff(chosen.config, fastest.config)})"
        return (f"{who} {_speed_predicate(chosen, fastest, latency_key)} and "
                f"{_objective_predicate(chosen, lowest, key, has_slos)}")
    return (f"{_fastest_clause(chosen, fastest, latency_key)}, and "
            f"{_lowest_clause(chosen, lowest, key, has_slos)}")


def _rank_latency(point: ConfigPoint, key: str, latency_key: str) -> tuple:
    # min() over this key: lowest latency, then the higher objective, then the first trial.
    latency = point.mean.get(latency_key)
    return (math.inf if latency is None else latency, -(point.mean[key] or 0.0), point.trial_ids[0])


def _fastest_clause(chosen: ConfigPoint, fastest: ConfigPoint, latency_key: str) -> str:
    who = f"the fastest config ({_diff(chosen.config, fastest.config)})"
    return f"{who} {_speed_predicate(chosen, fastest, latency_key)}"


def _speed_predicate(chosen: ConfigPoint, fastest: ConfigPoint, latency_key: str) -> str:
    # "adds 33% to p90 TTFT for 11% more tokens/s": both relative to the recommended config.
    gain = _pct(fastest.mean[FASTEST_KEY] or 0.0, chosen.mean.get(FASTEST_KEY) or 0.0)
    more = "more tokens/s" if gain is None else f"{gain:.0f}% more tokens/s"
    their, mine = fastest.mean.get(latency_key), chosen.mean.get(latency_key)
    cost = None if their is None or mine is None else _pct(their, mine)
    label = latency_label(latency_key)
    if cost is None:
        return f"gives {more}"
    if cost >= 0:
        return f"adds {cost:.0f}% to {label} for {more}"
    return f"gives {more} at {-cost:.0f}% lower {label}"


def _lowest_clause(chosen: ConfigPoint, lowest: ConfigPoint, key: str, has_slos: bool) -> str:
    who = f"the lowest-latency config ({_diff(chosen.config, lowest.config)})"
    return f"{who} {_objective_predicate(chosen, lowest, key, has_slos)}"


def _objective_predicate(chosen: ConfigPoint, other: ConfigPoint, key: str, has_slos: bool) -> str:
    name = _THROUGHPUT_NAMES.get(key, (key, ""))[0]
    delta = _pct(other.mean[key] or 0.0, chosen.mean[key] or 0.0)
    if delta is None:
        return f"has a comparable {name}"
    if delta <= 0:
        return f"gives up {-delta:.0f}% of {name}"
    # More of the objective and not chosen: under SLOs it must miss one.
    return f"has {delta:.0f}% more {name}" + (" but misses an SLO" if has_slos else "")
