"""What the CLI and the dashboard ask of stored sweeps: one function each, no SQL, no math here
(the math lives in pareto.py / recommend.py, the storage in db/)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date
from statistics import median

from common.records import SLO, TrialConfig, TrialRecord
from db.store import Store, SweepRecord
from experiments.capacity import ConfigCapacity, plan_of, run_search, sentence
from experiments.estimate import GENERIC, PRIORS
from experiments.export import export_config
from experiments.grid import SweepSpec
from experiments.grid_capacity import read_grid
from experiments.predict import fit_cost_model, predict_points, stored_steps
from experiments.profiles import SLO_METRICS, Profile
from experiments.recommend import Recommendation, recommend


class NoSweepError(LookupError):
    """No sweep matches what was asked (bad input for the CLI)."""


@dataclass(frozen=True)
class SweepAnalysis:
    """A sweep, its trials, the SLOs it was run with, and the recommendation under `slos`."""

    sweep: SweepRecord
    trials: list[TrialRecord]
    slos: list[SLO]
    recommendation: Recommendation


def find_sweep(store: Store, sweep_id: int | None, profile: str | None) -> SweepRecord:
    """The given sweep, or the latest one run with `profile` (or the latest at all)."""
    if sweep_id is not None:
        return store.get_sweep(sweep_id)
    sweep = store.latest_sweep(profile)
    if sweep is None:
        what = f" with profile {profile!r}" if profile else ""
        raise NoSweepError(f"no sweep{what} in {store.display_url}; run `tradeoff sweep` first")
    return sweep


def stored_slos(trials: list[TrialRecord], store: Store) -> list[SLO]:
    """The SLOs (resolved to ms at run time) that the sweep's trials were judged against."""
    for trial in trials:
        if trial.status == "done":
            slos = store.trial_slos(trial.trial_id)
            # SLO_METRICS order (TTFT, TPOT, E2E): the first SLO words the explanation
            order = {m: i for i, m in enumerate(SLO_METRICS)}
            return [SLO(metric, spec["percentile"], float(spec["max_ms"]))
                    for metric, spec in sorted(slos.items(), key=lambda kv: order.get(kv[0], 99))]
    return []


def analyse(store: Store, sweep: SweepRecord, slos: list[SLO] | None = None,
            objective: str | None = None) -> SweepAnalysis:
    """Recommend for `sweep`, with its stored SLOs unless `slos` overrides them (what-if)."""
    trials = store.list_trials(sweep.id)
    resolved = stored_slos(trials, store) if slos is None else slos
    profile = Profile(**sweep.profile)
    rec = recommend(trials, objective or profile.objective, resolved)
    return SweepAnalysis(sweep, trials, resolved, rec)


def export_provenance(sweep: SweepRecord) -> dict:
    """Provenance fields every export carries."""
    return {"model": sweep.model, "device": sweep.device_name or sweep.device,
            "sweep_id": sweep.id, "date": date.today().isoformat(),
            "profile": sweep.profile.get("name"),
            "tradeoff_version": sweep.provenance.get("tradeoff") or "dev"}


def export_analysis(analysis: SweepAnalysis, fmt: str) -> str:
    """The recommended config of `analysis` rendered as `fmt`."""
    return export_config(analysis.recommendation, fmt, export_provenance(analysis.sweep))


def is_search(sweep: SweepRecord) -> bool:
    """Whether `sweep` is a capacity search (its grid names a search) rather than a load grid."""
    return bool(sweep.grid.get("search"))


def sweep_capacities(store: Store, sweep_id: int) -> tuple[list[ConfigCapacity], list[TrialRecord]]:
    """Each config's capacity, from a sweep's stored trials, and the trials."""
    trials = store.list_trials(sweep_id)
    return capacities_of(store.get_sweep(sweep_id), trials, stored_slos(trials, store)), trials


def capacities_of(sweep: SweepRecord, trials: list[TrialRecord],
                  slos: list[SLO]) -> list[ConfigCapacity]:
    """Each config's capacity from a sweep's trials (already read): a search's answer replayed,
    or for a load grid the largest level each config met under the SLOs its trials were judged
    against (`slos`, the stored ones; none: no capacity to read)."""
    if is_search(sweep):
        return run_search(SweepSpec(**sweep.grid), Profile(**sweep.profile), trials)
    return read_grid(Profile(**sweep.profile), trials) if slos else []


def capacity_sentence(sweep: SweepRecord, capacities: list[ConfigCapacity]) -> str:
    """The sentence naming the config that carries the most; for a grid, how coarse that is."""
    text = sentence(capacities, sweep.profile.get("name") or "profile")
    if is_search(sweep) or not capacities:
        return text
    return (text + " (read off the grid's load levels, so coarse: loads between two levels were "
            "not tried; `tradeoff search` finds the boundary)")


def prediction_errors(trials: list[TrialRecord]) -> dict[str, dict[str, float]]:
    """Per predicted metric: how many trials, and the median absolute relative error of the
    prediction made before each trial ran (from details["prediction"])."""
    errors: dict[str, list[float]] = {}
    for t in trials:
        for key, err in t.details.get("prediction", {}).get("error", {}).items():
            errors.setdefault(key, []).append(abs(err))
    return {k: {"n": len(v), "median_abs_error": median(v)} for k, v in errors.items()}


def predicted_capacity(trials: list[TrialRecord]) -> dict[str, float]:
    """Each config's capacity as the search plan predicted it (empty before calibration)."""
    plan = plan_of(trials)
    return dict(plan.get("predicted", {})) if plan else {}


def predicted_grid(store: Store, sweep: SweepRecord) -> list[tuple[TrialConfig, dict]]:
    """Every config x load of a grid sweep (for a search: of its measured loads) as the simulator
    predicts it, under the cost model fitted to all the sweep's stored steps."""
    trials = store.list_trials(sweep.id)
    spec, profile = SweepSpec(**sweep.grid), Profile(**sweep.profile)
    cost = fit_cost_model(stored_steps(t.details for t in trials), PRIORS.get(spec.model, GENERIC))
    configs = ([c for c in spec.trial_configs() if c.repetition == 0] if spec.search is None
               else sorted({replace(t.config, repetition=0) for t in trials}, key=lambda c: c.label))
    return predict_points(configs, profile, spec.requests, cost, stored_slos(trials, store), spec.seed)
