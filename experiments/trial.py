"""One trial = one batching config x one load level x one repetition, against a started target."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from engine.config import SchedulerConfig
from engine.core import StepRecord
from experiments.loadgen import (
    LoadResult,
    LoadTarget,
    RequestSpec,
    StopCheck,
    make_requests,
    open_loop_arrivals,
    run_closed_loop,
    run_open_loop,
)
from experiments.metrics import compute_trial_metrics, latency_samples, summarize
from experiments.profiles import SLO_METRICS, Profile
from experiments.records import SLO, RequestRecord, TrialConfig, TrialMetrics

# The unloaded baseline: one request at a time, dispatched at once.
BASELINE_SCHED = SchedulerConfig(policy="static", max_batch_size=1, max_wait_ms=0.0)


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: its metrics, the measured requests (engine-clock seconds) and steps."""

    config: TrialConfig
    metrics: TrialMetrics
    records: list[RequestRecord]
    steps: list[StepRecord]
    was_cut: bool  # max_duration_s ended it early; metrics cover the requests that ended in time
    was_stopped: bool = False  # should_stop ended it: a partial trial, not a result to store


def sched_config_of(config: TrialConfig) -> SchedulerConfig:
    """The engine's batching knobs for one trial."""
    return SchedulerConfig(config.policy, config.batch_size, config.max_wait_ms)


def run_trial(engine: LoadTarget, config: TrialConfig, profile: Profile, num_requests: int, *,
              vocab_size: int, max_context_tokens: int, avoid_ids: Seq[int], seed: int,
              slos: list[SLO], max_duration_s: float | None = None,
              memory: Callable[[], float | None] | None = None,
              reset_memory: Callable[[], None] | None = None,
              should_stop: StopCheck | None = None) -> TrialResult:
    """Reconfigure the engine, drive `num_requests` measured requests (after warm-up), measure."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    engine.reconfigure(sched_config_of(config))
    engine.take_steps()  # drop steps from before this trial
    if reset_memory is not None:
        reset_memory()
    num_warmup = profile.warmup_requests
    specs = make_requests(profile, num_warmup + num_requests, seed, vocab_size,
                          max_context_tokens, avoid_ids)
    load = _drive(engine, config, specs, num_warmup, seed, max_duration_s, should_stop)
    steps = engine.take_steps()
    peak_mb = memory() if memory is not None else None
    metrics = compute_trial_metrics(load.records, steps, slos, peak_mb, load.saturated,
                                    load.background)
    return TrialResult(config, metrics, load.records, steps, load.was_cut, load.was_stopped)


def _drive(engine: LoadTarget, config: TrialConfig, specs: list[RequestSpec], num_warmup: int,
           seed: int, max_duration_s: float | None, should_stop: StopCheck | None) -> LoadResult:
    if config.concurrency is not None:
        return run_closed_loop(engine, specs, config.concurrency, num_warmup, max_duration_s,
                               should_stop)
    if config.rate is None:
        raise ValueError(f"trial {config.policy}/b{config.batch_size} sets neither concurrency "
                         "nor rate; set one load level")
    arrivals = open_loop_arrivals(config.rate, config.burstiness, len(specs), seed)
    return run_open_loop(engine, specs, arrivals, num_warmup, config.batch_size, max_duration_s,
                         should_stop)


def measure_baseline(engine: LoadTarget, profile: Profile, *, vocab_size: int,
                     max_context_tokens: int, avoid_ids: Seq[int], seed: int,
                     num_requests: int = 8) -> dict[str, float]:
    """Unloaded p50 TTFT/TPOT/E2E (ms): static batch 1, no wait, one request at a time."""
    # An external server has no config to restore (its reconfigure is a no-op).
    previous = getattr(engine, "sched_config", None)
    engine.reconfigure(BASELINE_SCHED)
    try:
        specs = make_requests(profile, 1 + num_requests, seed, vocab_size, max_context_tokens,
                              avoid_ids)
        # An extra, short first request, not measured: it pays any lazy initialisation.
        warmup = RequestSpec(specs[0].prompt_ids, min(specs[0].max_new_tokens, 4))
        load = run_closed_loop(engine, [warmup, *specs[1:]], concurrency=1, num_warmup=1)
    finally:
        if previous is not None:
            engine.reconfigure(previous)
    engine.take_steps()  # baseline steps belong to no trial
    samples = latency_samples(load.records)
    dists = {metric: summarize(samples[metric]) for metric in SLO_METRICS}
    return {metric: d.p50 for metric, d in dists.items() if d is not None}
