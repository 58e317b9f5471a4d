"""Sweep duration estimates before anything runs: each trial simulated on the virtual clock.

The cost model is a rough per-model prior (step times measured once on a 2-core CPU for the
built-ins and for directories exported from them; a generic one otherwise: `simulate.prior_cost`),
or the step costs an earlier sweep of the same server calibrated. It is an estimate, and the UI
and CLI say so. Trials are simulated by `simulate.simulate_records`, the simulator predictions use, so an
estimate runs the scheduler a trial configures (token budget, adaptive SLO targets included).
"""

from __future__ import annotations

import os
from dataclasses import replace

from common.details import SearchPlan
from common.records import SLO, TrialConfig
from engine.simulate import CostModel
from experiments.analysis.metrics import latency_samples, summarize
from experiments.load.sim_sessions import SIM_VOCAB_SIZE
from experiments.load.workload import make_requests
from experiments.predict.simulate import PER_TRIAL_OVERHEAD_S, prior_cost, simulate_records
from experiments.run.drift import CHECK_EVERY_S, CHECK_REQUESTS, CHECK_TOKENS, checks_enabled
from experiments.run.trial import BASELINE_SCHED
from experiments.search.capacity import run_search, uses_prediction
from experiments.search.capacity_plan import calibration_probe, make_plan, simulated_measure
from experiments.spec.grid import SweepSpec, server_key
from experiments.spec.profiles import SLO_METRICS, Profile, ProfileError, needs_baseline, resolve_slos
from experiments.targets.engines import start_prior_s

MODEL_LOAD_S = 8.0  # worker start, torch + transformers import, model build


def simulate_trial_s(config: TrialConfig, profile: Profile, num_requests: int, cost: CostModel,
                     seed: int = 0, slos: list[SLO] = ()) -> float:
    """Simulated wall time of one trial (warm-up included) under `cost`: until its last measured
    request ends, where the real load generator stops (and cancels warm-up and cooldown ones)."""
    measured, background, _ = simulate_records(config, profile, num_requests, cost, seed, slos=slos)
    return max((r.done_s or 0.0 for r in measured or background), default=0.0)


def server_starts(spec: SweepSpec) -> int:
    """How many servers a sweep starts: one per server config (0 when it starts none)."""
    if not spec.starts_servers:
        return 0
    configs = spec.knob_configs() if spec.search is not None else spec.trial_configs()
    return len({server_key(c) for c in configs})


def start_s_of(spec: SweepSpec, measured: list[float]) -> float:
    """Seconds per server start: the mean of starts measured before (same engine and model),
    else the engine's prior."""
    if measured:
        return sum(measured) / len(measured)
    return start_prior_s(spec.target.engine, spec.target.engine_args)


def estimate_sweep_s(spec: SweepSpec, profile: Profile, measured_starts: list[float] = (),
                     cost: CostModel | None = None) -> float:
    """Estimated seconds for the whole sweep: model load or server starts, plus every trial
    simulated under `cost` (a server's recorded calibration) or the model's prior."""
    cost = cost or prior_cost(spec.target.model)
    # Repetitions differ only in seed: simulate each config once and multiply.
    configs = [c for c in spec.trial_configs() if c.repetition == 0]
    slos = _adaptive_targets(configs, profile, cost, spec.load.seed)
    load = spec.load
    trial_s = sum(simulate_trial_s(c, profile, load.requests, cost, load.seed, slos) for c in configs)
    # One model load per replica count (each starts its own replica set), or per Ray worker, in
    # parallel; a local Ray cluster runs one trial per core at a time (a remote one: unknown,
    # so its estimate stays sequential, an upper bound).
    loads = len(spec.knobs.replicas) if spec.uses_replica_processes else 1
    workers = 1
    if spec.execution.executor == "ray" and spec.execution.ray_address is None:
        workers = max(1, len(os.sched_getaffinity(0)) // spec.execution.ray_cpus_per_trial)
    starts = server_starts(spec)  # on Ray, each worker starts its own servers, in parallel
    trial_s = (trial_s + PER_TRIAL_OVERHEAD_S * len(configs)) * spec.load.repetitions
    if not starts:
        return MODEL_LOAD_S * loads + trial_s / workers
    start_s = starts * start_s_of(spec, list(measured_starts))
    return (start_s + server_overhead_s(spec, profile, cost, starts, trial_s) + trial_s) / workers


def server_overhead_s(spec: SweepSpec, profile: Profile, cost: CostModel, starts: int,
                      trial_s: float) -> float:
    """What a sweep over started servers spends besides starts and trials (sweep.py, drift.py):
    each server's warm-up trial and its speed checks (one as it opens, one as it closes), the
    sweep's reference checks (a warm-up and two) and one every CHECK_EVERY_S of trials, and the unloaded
    baseline when an SLO is relative; all simulated under `cost`."""
    warm_up = TrialConfig("continuous", max(spec.knobs.batch_sizes), 0.0, concurrency=2)
    per_server = simulate_trial_s(warm_up, profile, 4, cost, spec.load.seed)
    once = 0.0
    if needs_baseline(profile):
        baseline = TrialConfig(BASELINE_SCHED.policy, 1, 0.0, concurrency=1)
        once += simulate_trial_s(baseline, profile, 8, cost, spec.load.seed)
    if checks_enabled() and spec.execution.executor != "ray":  # a Ray worker runs no speed checks
        check = speed_check_s(profile, cost, spec.load.seed)
        per_server += 2 * check
        once += (3 + int(trial_s // CHECK_EVERY_S)) * check
    return starts * per_server + once


def speed_check_s(profile: Profile, cost: CostModel, seed: int = 0) -> float:
    """One speed check (drift.speed_check) under `cost`: CHECK_REQUESTS + 1 requests one at a
    time, outputs cut to CHECK_TOKENS."""
    specs = make_requests(profile, 1 + CHECK_REQUESTS, seed, SIM_VOCAB_SIZE, 1 << 20, [])
    per_token_s = cost.decode_s(1) + cost.step_overhead_s
    return sum(cost.prefill_s(1, len(s.prompt_ids)) + (min(s.max_new_tokens, CHECK_TOKENS) - 1) * per_token_s
               for s in specs)


def _adaptive_targets(configs: list[TrialConfig], profile: Profile, cost: CostModel,
                      seed: int) -> list[SLO]:
    """The SLOs the adaptive policy steers by (the only scheduler that reads them)."""
    if not profile.slos or not any(c.policy == "adaptive" for c in configs):
        return []
    try:
        return predicted_slos(profile, cost, seed)
    except ProfileError:  # a relative SLO the simulated baseline lacks: the policy's defaults
        return []


def predicted_slos(profile: Profile, cost: CostModel, seed: int = 0) -> list[SLO]:
    """The profile's SLOs resolved against a simulated unloaded baseline (relative SLOs)."""
    baseline = TrialConfig(BASELINE_SCHED.policy, 1, 0.0, concurrency=1)
    records, _, _ = simulate_records(baseline, profile, 8, cost, seed)
    dists = {m: summarize(v) for m, v in latency_samples(records).items() if m in SLO_METRICS}
    return resolve_slos(profile, {m: d.p50 for m, d in dists.items() if d is not None})


def estimate_search_s(spec: SweepSpec, profile: Profile) -> tuple[float, int]:
    """Estimated seconds and trials of a capacity search: the search itself (calibration, plan,
    bisection) run against simulated trials under the model's prior cost model, capped by the
    budget."""
    assert spec.search is not None
    cost = prior_cost(spec.target.model)
    slos = predicted_slos(profile, cost, spec.load.seed)
    spent, memo = [0.0], {}
    plan = SearchPlan()
    if uses_prediction(spec):
        probe = calibration_probe(spec, profile, slos)
        load = probe.concurrency if probe.concurrency is not None else probe.rate
        plan = make_plan(spec, profile, cost, slos, replace(probe, concurrency=None, rate=None),
                         float(load), memo)
    measure = simulated_measure(spec, profile, cost, slos, spent, memo)
    results = run_search(spec, profile, [], measure, lambda: spent[0] < spec.search.budget_s, plan)
    trials = sum(r.capacity.num_probes for r in results)
    return MODEL_LOAD_S + min(spent[0], spec.search.budget_s), trials
