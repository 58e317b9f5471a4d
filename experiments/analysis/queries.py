"""What the CLI and the dashboard ask of stored sweeps: one function each, no SQL, no math here
(the math lives in pareto.py / recommend.py, the storage in db/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from statistics import median

from common.details import Attainment
from common.records import SLO, RequestRecord, TrialConfig, TrialRecord
from db.rows import StoredRequest
from db.store import Store, SweepRecord
from experiments.analysis.answer import SLORule, rules_for
from experiments.analysis.grid_capacity import read_levels
from experiments.analysis.metrics import attainment_evidence, meets_slos
from experiments.analysis.recommend import OBJECTIVES, Recommendation, recommend
from experiments.export.render import export_config
from experiments.predict.simulate import (
    fit_cost_model,
    predict_points,
    prior_cost,
    stored_calibration,
    stored_steps,
)
from experiments.run.provenance import batches_by_itself
from experiments.search.capacity import ConfigCapacity, plan_of, run_search
from experiments.spec.grid import SweepSpec, server_key
from experiments.spec.profiles import SLO_METRICS, Profile
from experiments.spec.sections import flat_keys


class NoSweepError(LookupError):
    """No sweep matches what was asked (bad input for the CLI)."""


@dataclass(frozen=True)
class SweepAnalysis:
    """A sweep, its trials, the SLOs it was run with, and the recommendation under `slos`."""

    sweep: SweepRecord
    trials: list[TrialRecord]
    slos: list[SLO]
    recommendation: Recommendation
    capacities: list[ConfigCapacity] = field(default_factory=list)  # what the answer chose from
    whatif: bool = False  # judged under SLOs other than the sweep's own


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
    """Recommend for `sweep`, with its stored SLOs unless `slos` overrides them (what-if: each
    trial's requests are judged again under those SLOs, by the same evidence rule)."""
    trials = store.list_trials(sweep.id)
    stored = stored_slos(trials, store)
    whatif = slos is not None and set(slos) != set(stored)
    resolved = stored if slos is None else slos
    profile = Profile(**sweep.profile)
    objective = objective or profile.objective
    judged = rejudge(trials, resolved, store.get_requests) if whatif and resolved else trials
    caps = _capacities(sweep, profile, judged, resolved, objective, whatif)
    rec = recommend(judged, objective, resolved, target=profile.min_slo_attainment,
                    capacities=caps or None, rules=slo_rules(profile, resolved, stored),
                    profile_name=profile.name, subject=server_subject(sweep))
    return SweepAnalysis(sweep, judged, resolved, rec, caps, whatif)


def server_subject(sweep: SweepRecord) -> str | None:
    """`the server at URL (engine version)` for a bare --target, whose knobs were its own."""
    return f"the {sweep.device_name}" if batches_by_itself(sweep.device_name) else None


def _capacities(sweep: SweepRecord, profile: Profile, trials: list[TrialRecord], slos: list[SLO],
                objective: str, whatif: bool) -> list[ConfigCapacity]:
    if is_search(sweep) and not whatif:  # a what-if reads the search's loads as a grid
        return run_search(SweepSpec(**sweep.grid), profile, trials)
    return read_levels(trials, profile.min_slo_attainment, OBJECTIVES[objective]) if slos else []


def slo_rules(profile: Profile, slos: list[SLO], stored: list[SLO]) -> list[SLORule]:
    """Where each threshold came from: `k x unloaded p50 B ms` for the profile's relative SLOs
    as the sweep resolved them, `absolute`, or `what-if` for thresholds the user moved."""
    multiples = {m: s.max_x_baseline for m, s in profile.slos.items() if s.max_x_baseline}
    rules = rules_for(slos, multiples)
    return [r if r.slo in stored or r.rule == "absolute" else SLORule(r.slo, "what-if")
            for r in rules]


def rejudge(trials: list[TrialRecord], slos: list[SLO],
            requests: Callable[[int], list[StoredRequest]]) -> list[TrialRecord]:
    """The trials with SLO attainment and goodput recomputed from their stored requests under
    `slos` (the per-request check of docs/metrics.md), so what-if SLOs are judged by the same
    evidence rule as the sweep's own."""
    out = []
    for t in trials:
        if t.status != "done" or not t.metrics:
            out.append(t)
            continue
        reqs = sorted(requests(t.trial_id), key=lambda r: r.scheduled_ms)
        passed = [stored_meets(r, slos) for r in reqs]
        good, ok = sum(passed), sum(r.is_ok for r in reqs)
        rps = float(t.metrics.get("requests_per_s") or 0.0)
        metrics = {**t.metrics, "slo_attainment": good / len(reqs) if reqs else 0.0,
                   "goodput_rps": rps * good / ok if ok else 0.0}
        attainment = Attainment.from_dict(attainment_evidence(passed))
        out.append(replace(t, metrics=metrics, details=replace(t.details, attainment=attainment)))
    return out


def stored_meets(r: StoredRequest, slos: list[SLO]) -> bool:
    """`metrics.meets_slos` over a stored request (times in ms from the trial start): its first
    token and end are all the per-request SLO metrics read."""
    first = () if r.first_token_ms is None else (r.first_token_ms / 1000,)
    record = RequestRecord(r.request_index, r.scheduled_ms / 1000, r.sent_ms / 1000, None, first,
                           None if r.done_ms is None else r.done_ms / 1000,
                           r.num_prompt_tokens, r.num_output_tokens, r.error)
    return meets_slos(record, slos)


def export_provenance(sweep: SweepRecord) -> dict:
    """Provenance fields every export carries."""
    return {"model": sweep.model, "device": sweep.device_name or sweep.device,
            "sweep_id": sweep.id, "date": date.today().isoformat(),
            "profile": sweep.profile.get("name"),
            "tradeoff_version": sweep.provenance.get("tradeoff") or "dev"}


def export_analysis(analysis: SweepAnalysis, fmt: str) -> str:
    """The recommended config of `analysis` rendered as `fmt`, naming the server it ran on."""
    provenance = {**export_provenance(analysis.sweep),
                  "engine": measured_server(analysis.trials, analysis.recommendation.config)}
    return export_config(analysis.recommendation, fmt, provenance)


def measured_server(trials: list[TrialRecord], config: TrialConfig | None) -> dict | None:
    """The server a config's trials ran on ({name, version, command}: a started engine's, as
    recorded in each trial's provenance), or None (tradeoff's own engine, or a bare target)."""
    if config is None:
        return None
    key = server_key(config)
    for trial in trials:
        engine = trial.details.provenance.engine if trial.details.provenance else None
        if trial.status == "done" and engine and server_key(trial.config) == key:
            return engine
    return None


def is_search(sweep: SweepRecord) -> bool:
    """Whether `sweep` is a capacity search (its grid names a search) rather than a load grid."""
    return bool(flat_keys(sweep.grid).get("search"))  # no parse: any stored grid, either shape


def sweep_capacities(store: Store, sweep_id: int) -> tuple[list[ConfigCapacity], list[TrialRecord]]:
    """Each config's capacity, from a sweep's stored trials (the analysis's), and the trials."""
    analysis = analyse(store, store.get_sweep(sweep_id))
    return analysis.capacities, analysis.trials


def capacity_sentence(analysis: SweepAnalysis) -> str:
    """The recommendation's sentence; for a grid, how coarse its capacity reading is."""
    note = coarse_note(analysis)
    return analysis.recommendation.explanation + (f" {note}" if note else "")


def coarse_note(analysis: SweepAnalysis) -> str:
    """For a grid's capacity reading, why it is coarse; "" otherwise."""
    if is_search(analysis.sweep) or not analysis.capacities:
        return ""
    return ("Capacity is read off the grid's load levels, so coarse: loads between two levels "
            "were not tried; `tradeoff search` finds the boundary.")


def prediction_errors(trials: list[TrialRecord]) -> dict[str, dict[str, float]]:
    """Per predicted metric: how many trials, and the median absolute relative error of the
    prediction made before each trial ran (from details.prediction)."""
    errors: dict[str, list[float]] = {}
    for t in trials:
        prediction = t.details.prediction
        for key, err in (prediction.error if prediction is not None else {}).items():
            errors.setdefault(key, []).append(abs(err))
    return {k: {"n": len(v), "median_abs_error": median(v)} for k, v in errors.items()}


def predicted_capacity(trials: list[TrialRecord]) -> dict[str, float]:
    """Each config's capacity as the search plan predicted it (empty before calibration)."""
    plan = plan_of(trials)
    return dict(plan.predicted) if plan else {}


def predicted_grid(store: Store, sweep: SweepRecord) -> list[tuple[TrialConfig, dict]]:
    """Every config x load of a grid sweep (for a search: of its measured loads) as the simulator
    predicts it, under the cost model fitted to all the sweep's stored steps."""
    trials = store.list_trials(sweep.id)
    spec, profile = SweepSpec(**sweep.grid), Profile(**sweep.profile)
    cost = stored_calibration(t.details for t in trials) or \
        fit_cost_model(stored_steps(t.details for t in trials), prior_cost(spec.target.model))
    configs = ([c for c in spec.trial_configs() if c.repetition == 0] if spec.search is None
               else sorted({replace(t.config, repetition=0) for t in trials}, key=lambda c: c.label))
    return predict_points(configs, profile, spec.load.requests, cost, stored_slos(trials, store),
                          spec.load.seed)
