"""Goodput vs replicas: the simulator's N replicas behind a router (1-64) next to measured points.

The load grows with the replicas (weak scaling: each replica's share of the offered load stays
what one replica was measured at), so perfect scaling is a straight line through N x goodput(1)
and every shortfall is routing imbalance or a poor batching config. Simulated and measured
points are kept apart (`source`) so charts and tables never blend them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.records import SLO, TrialConfig, TrialRecord
from engine.simulate import CostModel
from experiments.spec.profiles import Profile

REPLICA_COUNTS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
# Requests per simulated point: at least MIN_SIM_REQUESTS (few replicas are cheap, and fewer
# requests than that leave goodput to the warm-up's edges), at most MAX_SIM_REQUESTS (a step
# at 64 replicas costs 64 times one at 1): four configs x 7 counts in about 3 s on 2 cores.
MIN_SIM_REQUESTS = 192
MAX_SIM_REQUESTS = 768
REQUESTS_PER_REPLICA = 24
SCALE_METRICS = ("per_replica", "efficiency", "total")


@dataclass(frozen=True)
class ScalePoint:
    """Goodput of one batching config at N replicas, simulated or measured."""

    config: str  # the batching knobs, without replicas (e.g. `continuous/b8/w0ms`)
    replicas: int
    router: str | None
    load_per_replica: str  # `poisson@4.00` or `concurrent@8`: the load one replica's share is
    goodput_rps: float
    requests_per_s: float
    source: str  # "simulated" | "measured"
    trial_id: int | None = None


def scaled(config: TrialConfig, replicas: int, router: str | None) -> TrialConfig:
    """`config` (one replica's load) on `replicas` replicas with N times the load."""
    if replicas == 1:
        return dataclasses.replace(config, replicas=1, router=None)
    if config.concurrency is not None:
        return dataclasses.replace(config, concurrency=config.concurrency * replicas,
                                   replicas=replicas, router=router)
    if config.rate is None:
        raise ValueError(f"{config.label}: scaling needs a rate or a concurrency")
    return dataclasses.replace(config, rate=config.rate * replicas, replicas=replicas, router=router)


def per_replica(config: TrialConfig) -> TrialConfig:
    """The one-replica config whose load `config` is N times of."""
    n = config.replicas
    if config.concurrency is not None:
        if config.concurrency % n:
            return dataclasses.replace(config, replicas=1, router=None, concurrency=None,
                                       rate=None)  # not a weak-scaling point
        return dataclasses.replace(config, concurrency=config.concurrency // n, replicas=1, router=None)
    rate = None if config.rate is None else config.rate / n
    return dataclasses.replace(config, rate=rate, replicas=1, router=None)


def knobs_label(config: TrialConfig) -> str:
    """The batching knobs alone: the server label of the one-replica config."""
    return dataclasses.replace(config, replicas=1, router=None).server_label


def simulate_scaling(base: TrialConfig, profile: Profile, slos: list[SLO], cost: CostModel,
                     router: str, counts: Sequence[int] = REPLICA_COUNTS,
                     requests_per_replica: int = REQUESTS_PER_REPLICA, seed: int = 0,
                     min_requests: int = 0) -> list[ScalePoint]:
    """Simulated goodput of `base` (one replica's load) at each replica count behind `router`:
    `requests_per_replica` x N requests, at least `min_requests`, at most MAX_SIM_REQUESTS."""
    from experiments.predict.simulate import simulate_trial

    points = []
    for n in counts:
        config = scaled(base, n, router)
        num_requests = min(max(requests_per_replica * n, min_requests),
                           max(min_requests, MAX_SIM_REQUESTS))
        m = simulate_trial(config, profile, num_requests, cost, slos, seed)
        points.append(ScalePoint(knobs_label(base), n, config.router, base.load_label,
                                 m.goodput_rps, m.requests_per_s, "simulated"))
    return points


def measured_points(trials: Iterable[TrialRecord]) -> list[ScalePoint]:
    """Every done trial as a measured point, its load expressed per replica."""
    points = []
    for t in trials:
        if t.status != "done" or t.metrics.get("goodput_rps") is None:
            continue
        base = per_replica(t.config)
        if base.rate is None and base.concurrency is None and base.speedup is None:
            continue
        points.append(ScalePoint(knobs_label(t.config), t.config.replicas, t.config.router,
                                 base.load_label, float(t.metrics["goodput_rps"]),
                                 float(t.metrics.get("requests_per_s") or 0.0), "measured",
                                 t.trial_id))
    return points


def sweep_cost_model(trials: Iterable[TrialRecord], prior: CostModel) -> tuple[CostModel, int]:
    """Step times of every trial that stored them (details.prediction.steps) fitted to the
    simulator's cost model, and how many trials they came from; `prior` when none did."""
    from experiments.predict.simulate import fit_cost_model, stored_steps

    with_steps = [t.details for t in trials
                  if t.details.prediction is not None and t.details.prediction.steps]
    if not with_steps:
        return prior, 0
    return fit_cost_model(stored_steps(with_steps), prior), len(with_steps)


@dataclass(frozen=True)
class ScaleView:
    """What the scale-out chart needs of one stored sweep."""

    profile: Profile
    slos: list[SLO]
    cost: CostModel
    cost_source: str  # how the cost model was obtained, in words
    bases: list[TrialConfig]  # one-replica configs (repetition 0), best goodput first
    loads: list[str]  # their load labels, in first-seen order
    measured: list[ScalePoint]


def scale_view(trials: list[TrialRecord], profile: Profile, slos: list[SLO], model: str) -> ScaleView | None:
    """The chart's inputs from a sweep's trials; None without a done one-replica trial."""
    from experiments.predict.simulate import GENERIC, PRIORS

    done = [t for t in trials if t.status == "done"]
    ones = [t for t in done if t.config.replicas == 1 and t.config.repetition == 0
            and (t.config.rate is not None or t.config.concurrency is not None)]
    if not ones:
        return None
    ones.sort(key=lambda t: -float(t.metrics.get("goodput_rps") or 0.0))
    cost, num_fits = sweep_cost_model(done, PRIORS.get(model, GENERIC))
    source = (f"fitted to the measured steps of {num_fits} trials" if num_fits
              else f"the prior for {model} (2-core CPU); no trial carried fitted step times")
    bases = [dataclasses.replace(t.config, repetition=0) for t in ones]
    return ScaleView(profile, slos, cost, source, bases, list(dict.fromkeys(b.load_label for b in bases)),
                     measured_points(done))


def scaling_values(points: Sequence[ScalePoint], metric: str) -> list[float | None]:
    """Each point's `metric` (SCALE_METRICS): goodput per replica (flat under perfect scaling),
    scaling efficiency (goodput / (N x the same config's, source's and load's one-replica
    goodput), 1.0 = perfect; None without a nonzero one-replica point) or total goodput."""
    if metric == "total":
        return [p.goodput_rps for p in points]
    if metric == "per_replica":
        return [p.goodput_rps / p.replicas for p in points]
    ones: dict[tuple, list[float]] = {}
    for p in points:
        if p.replicas == 1:
            ones.setdefault((p.config, p.source, p.load_per_replica), []).append(p.goodput_rps)
    base = {k: sum(v) / len(v) for k, v in ones.items()}
    out: list[float | None] = []
    for p in points:
        one = base.get((p.config, p.source, p.load_per_replica))
        out.append(p.goodput_rps / (p.replicas * one) if one else None)
    return out


def measured_routers(points: Iterable[ScalePoint]) -> list[str]:
    """The routers measured trials ran behind (replicas > 1), most trials first."""
    counts: dict[str, int] = {}
    for p in points:
        if p.source == "measured" and p.replicas > 1 and p.router:
            counts[p.router] = counts.get(p.router, 0) + 1
    return sorted(counts, key=lambda r: -counts[r])
