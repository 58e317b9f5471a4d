"""Sweep duration estimates before anything runs: each trial simulated on the virtual clock.

The cost model is a rough per-model prior (step times measured once on a 2-core CPU for the
built-ins; a generic one otherwise). It is an estimate, and the UI and CLI say so.
"""

from __future__ import annotations

import os
from dataclasses import replace

from common.records import SLO, TrialConfig
from engine.config import SchedulerConfig
from engine.simulate import CostModel, Simulator
from experiments.grid import SweepSpec
from experiments.metrics import latency_samples, summarize
from experiments.profiles import SLO_METRICS, OpenArrival, Profile, TraceArrival, resolve_slos
from experiments.traces import prepare_replay
from experiments.workload import make_requests, open_loop_arrivals

MS = 1e-3
# Fitted to step times measured on a 2-core CPU (decode at batch 1/4/16, prefill of 64 to
# 1,024 tokens); HF's per-layer Python overhead dominates these small models' steps.
PRIORS: dict[str, CostModel] = {
    "builtin:tiny": CostModel(8.0 * MS, 0.12 * MS, 4.0 * MS, 0.3 * MS),
    "builtin:small": CostModel(20.0 * MS, 0.5 * MS, 12.0 * MS, 1.3 * MS),
}
GENERIC = CostModel(20 * MS, 0.2 * MS, 25 * MS, 0.5 * MS)
MODEL_LOAD_S = 8.0  # worker start, torch + transformers import, model build
PER_TRIAL_OVERHEAD_S = 0.1


def simulate_trial_s(config: TrialConfig, profile: Profile, num_requests: int, cost: CostModel,
                     seed: int = 0) -> float:
    """Simulated wall time of one trial (warm-up included) under `cost`."""
    sim = Simulator(SchedulerConfig(config.policy, config.batch_size, config.max_wait_ms), cost,
                    replicas=config.replicas, router=config.router)
    if config.speedup is not None and isinstance(profile.arrival, TraceArrival):
        replay = prepare_replay(profile.arrival, config.speedup)  # the window sets the count
        for at_s, p, o in zip(replay.arrival_s.tolist(), replay.prompt_tokens.tolist(),
                              replay.output_tokens.tolist(), strict=True):
            sim.submit_at(at_s, p, o)
        return max((s.done_s or 0.0) for s in sim.run())
    n = num_requests + profile.warmup_requests
    specs = make_requests(profile, n, seed, vocab_size=2, max_context_tokens=1 << 20, avoid_ids=[])
    lengths = [(len(s.prompt_ids), s.max_new_tokens) for s in specs]
    if config.concurrency is not None:
        _closed_loop(sim, lengths, config.concurrency)
    else:
        schedule = profile.arrival.schedule if isinstance(profile.arrival, OpenArrival) else None
        arrivals = open_loop_arrivals(config.rate, config.burstiness, n, seed, schedule)
        for at_s, (p, o) in zip(arrivals, lengths, strict=True):
            sim.submit_at(at_s, p, o)
    return max((s.done_s or 0.0) for s in sim.run())


def _closed_loop(sim: Simulator, lengths: list[tuple[int, int]], concurrency: int) -> None:
    pending = iter(lengths)

    def next_request(at_s: float) -> None:
        item = next(pending, None)
        if item is not None:
            sim.submit_at(at_s, item[0], item[1], on_finish=lambda seq: next_request(seq.done_s))

    for _ in range(concurrency):
        next_request(0.0)


def estimate_sweep_s(spec: SweepSpec, profile: Profile) -> float:
    """Estimated seconds for the whole sweep: model load plus every simulated trial."""
    cost = PRIORS.get(spec.model, GENERIC)
    # Repetitions differ only in seed: simulate each config once and multiply.
    configs = [c for c in spec.trial_configs() if c.repetition == 0]
    trial_s = sum(simulate_trial_s(c, profile, spec.requests, cost, spec.seed) for c in configs)
    # One model load per replica count (each starts its own replica set), or per Ray worker, in
    # parallel; a local Ray cluster runs one trial per core at a time (a remote one: unknown,
    # so its estimate stays sequential, an upper bound).
    loads = len(spec.replicas) if spec.uses_replica_processes else 1
    workers = 1
    if spec.executor == "ray" and spec.ray_address is None:
        workers = max(1, len(os.sched_getaffinity(0)) // spec.ray_cpus_per_trial)
    return MODEL_LOAD_S * loads + (trial_s + PER_TRIAL_OVERHEAD_S * len(configs)) * spec.repetitions / workers


def predicted_slos(profile: Profile, cost: CostModel, seed: int = 0) -> list[SLO]:
    """The profile's SLOs resolved against a simulated unloaded baseline (relative SLOs)."""
    from experiments.predict import simulate_records
    from experiments.trial import BASELINE_SCHED

    baseline = TrialConfig(BASELINE_SCHED.policy, 1, 0.0, concurrency=1)
    records, _, _ = simulate_records(baseline, profile, 8, cost, seed)
    dists = {m: summarize(v) for m, v in latency_samples(records).items() if m in SLO_METRICS}
    return resolve_slos(profile, {m: d.p50 for m, d in dists.items() if d is not None})


def estimate_search_s(spec: SweepSpec, profile: Profile) -> tuple[float, int]:
    """Estimated seconds and trials of a capacity search: the search itself (calibration, plan,
    bisection) run against simulated trials under the model's prior cost model, capped by the
    budget."""
    from experiments.capacity import run_search, uses_prediction
    from experiments.capacity_plan import calibration_probe, make_plan, simulated_measure

    assert spec.search is not None
    cost = PRIORS.get(spec.model, GENERIC)
    slos = predicted_slos(profile, cost, spec.seed)
    spent, memo = [0.0], {}
    plan: dict = {}
    if uses_prediction(spec):
        probe = calibration_probe(spec, profile, slos)
        load = probe.concurrency if probe.concurrency is not None else probe.rate
        plan = make_plan(spec, profile, cost, slos, replace(probe, concurrency=None, rate=None),
                         float(load), memo)
    measure = simulated_measure(spec, profile, cost, slos, spent, memo)
    results = run_search(spec, profile, [], measure, lambda: spent[0] < spec.search.budget_s, plan)
    trials = sum(r.capacity.num_probes for r in results)
    return MODEL_LOAD_S + min(spent[0], spec.search.budget_s), trials
