"""One trial = one batching config x one load level x one repetition, against a started target."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field, replace

import numpy as np

from common.details import PrefixCache, TimeSeries, Trace
from common.records import SLO, RequestRecord, Roofline, TrialConfig, TrialMetrics
from engine.config import SchedulerConfig
from engine.core import StepRecord
from experiments.analysis.metrics import (
    compute_trial_metrics,
    latency_samples,
    prefix_cache_details,
    summarize,
    ttft_by_turn,
)
from experiments.analysis.timeseries import trial_timeseries
from experiments.load.client_stats import with_client_check
from experiments.load.loadgen import LoadResult, LoadTarget, StopCheck, run_closed_loop, run_open_loop
from experiments.load.session_loadgen import run_sessions
from experiments.load.sessions import session_load
from experiments.load.workload import RequestSpec, make_requests, open_loop_arrivals, replay_requests
from experiments.spec.profiles import SLO_METRICS, OpenArrival, Profile, TraceArrival
from experiments.spec.traces import ATTRIBUTION, BUILTIN_TRACES, Replay, block_tokens_of, prepare_replay

# A trace trial replays its window, then lets the requests in flight finish for up to this
# many window lengths (plus TRACE_DRAIN_S) before it is cut.
TRACE_DRAIN_FACTOR, TRACE_DRAIN_S = 2.0, 30.0
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
    # Warm-up and cooldown requests (cancelled ones included): not measured, but a server's
    # counters count them too, so a rate over the counters needs their span as well.
    background: list[RequestRecord] = field(default_factory=list)


def sched_config_of(config: TrialConfig, slos: Seq[SLO] = ()) -> SchedulerConfig:
    """The engine's batching knobs for one trial; `adaptive` also steers by the TTFT/TPOT SLOs."""
    targets = {f"{s.metric.removesuffix('_ms')}_slo_ms": s.max_ms for s in slos
               if s.metric in ("ttft_ms", "tpot_ms")} if config.policy == "adaptive" else {}
    return SchedulerConfig(config.policy, config.batch_size, config.max_wait_ms,
                           max_num_batched_tokens=config.max_num_batched_tokens,
                           enable_prefix_caching=bool(config.prefix_caching), **targets)


def run_trial(engine: LoadTarget, config: TrialConfig, profile: Profile, num_requests: int, *,
              vocab_size: int, max_context_tokens: int, avoid_ids: Seq[int], seed: int,
              slos: list[SLO], max_duration_s: float | None = None,
              memory: Callable[[], float | None] | None = None,
              reset_memory: Callable[[], None] | None = None,
              should_stop: StopCheck | None = None,
              roofline: Callable[[list[StepRecord]], Roofline | None] | None = None) -> TrialResult:
    """Reconfigure the engine, drive `num_requests` measured requests (after warm-up), measure."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    engine.reconfigure(sched_config_of(config, slos))
    _route(engine, config)
    engine.take_steps()  # drop steps from before this trial
    if reset_memory is not None:
        reset_memory()
    model = {"vocab_size": vocab_size, "max_context_tokens": max_context_tokens, "avoid_ids": avoid_ids}
    trace: Trace | None = None
    if config.speedup is not None:
        replay = _replay_of(profile, config)
        specs = replay_requests(replay, block_tokens_of(profile.arrival), seed, **model)
        num_warmup = min(profile.warmup_requests, len(specs) - 1)
        load = run_open_loop(engine, specs, replay.arrival_s.tolist(), num_warmup,
                             config.batch_size, max_duration_s, should_stop)
        trace = trace_details(profile, replay, config.speedup, load)
    elif profile.session is not None:
        num_warmup = profile.warmup_requests
        sessions = session_load(profile, config.concurrency, config.rate, config.burstiness,
                                num_warmup, num_requests, seed, **model)
        load = run_sessions(engine, sessions, config.batch_size, max_duration_s, should_stop)
    else:
        num_warmup = profile.warmup_requests
        specs = make_requests(profile, num_warmup + num_requests, seed, **model)
        load = _drive(engine, config, profile, specs, num_warmup, seed, max_duration_s, should_stop)
    steps = engine.take_steps()
    peak_mb = memory() if memory is not None else None
    metrics = compute_trial_metrics(load.records, steps, slos, peak_mb, load.saturated,
                                    load.background)
    series = TimeSeries.from_dict(trial_timeseries(load.records, load.background, steps, slos))
    by_turn, cache = reuse_details(profile, load.records)
    metrics = replace(metrics, details=replace(metrics.details, trace=trace, timeseries=series,
                                               ttft_ms_by_turn=by_turn, prefix_cache=cache))
    metrics = with_client_check(metrics, load.records, load.background, load.client, num_warmup,
                                steps)
    if roofline is not None:  # the local engine's steps against its device's peaks
        metrics = replace(metrics, roofline_fraction=roofline(steps))
    return TrialResult(config, metrics, load.records, steps, load.was_cut, load.was_stopped,
                       load.background)


def reuse_details(profile: Profile, records: list[RequestRecord]
                  ) -> tuple[dict | None, PrefixCache | None]:
    """Session and prefix-cache extras: TTFT by turn, and the hit rate's inputs (or why
    unknown); None where the workload has no sessions / no prefix reuse to speak of."""
    by_turn = ttft_by_turn(records) if profile.session is not None else None
    cache = PrefixCache.from_dict(prefix_cache_details(records))
    if profile.session is not None or profile.shared_prefix is not None or cache.num_reporting:
        return by_turn, cache
    return by_turn, None


def trace_deadline_s(window_s: float) -> float:
    """How long a trace trial may run: its window, then a bounded drain."""
    return window_s * (1 + TRACE_DRAIN_FACTOR) + TRACE_DRAIN_S


def with_trace_window(profile: Profile, duration_s: float | None = None,
                      start_s: float | None = None) -> Profile:
    """`profile` with its trace window's replay duration and/or start offset replaced."""
    arrival = profile.arrival
    assert isinstance(arrival, TraceArrival)
    update = {k: v for k, v in (("duration_s", duration_s), ("start_s", start_s)) if v is not None}
    return profile.model_copy(update={"arrival": arrival.model_copy(update=update)})


def _replay_of(profile: Profile, config: TrialConfig) -> Replay:
    if not isinstance(profile.arrival, TraceArrival):
        raise ValueError(f"trial {config.label} sets a speed-up, but profile '{profile.name}' "
                         "replays no trace; use a trace profile (e.g. azure-conv) or a rate")
    return prepare_replay(profile.arrival, config.speedup)


def trace_details(profile: Profile, replay: Replay, speedup: float, load: LoadResult) -> Trace:
    """What a trace trial replayed: the window, the count, the scaling, and how faithfully."""
    arrival = profile.arrival
    assert isinstance(arrival, TraceArrival)
    sent = load.records + load.background
    lag_ms = np.asarray([(r.sent_s - r.scheduled_s) * 1000.0 for r in sent])
    return Trace(
        trace=arrival.trace, speedup=speedup,
        window_start_s=replay.start_s, window_end_s=replay.end_s,
        duration_s=(replay.end_s - replay.start_s) / speedup,
        requests_in_window=replay.num_requests, requests_replayed=len(sent),
        length_scale=arrival.length_scale, max_prompt_tokens=arrival.max_prompt_tokens,
        max_output_tokens=arrival.max_output_tokens,
        # Replay fidelity: sent - scheduled (= the trace's scaled arrival time), per request.
        send_lag_ms=_lag_summary(lag_ms),
        attribution=ATTRIBUTION if arrival.trace in BUILTIN_TRACES else None,
    )


def _lag_summary(lag_ms: np.ndarray) -> dict | None:
    if lag_ms.size == 0:
        return None
    p50, p99 = np.percentile(lag_ms, [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "max": round(float(lag_ms.max()), 4)}


def _route(engine: LoadTarget, config: TrialConfig) -> None:
    """Set a replica set's router for this trial; refuse a target with another replica count."""
    replicas = getattr(engine, "replicas", None)
    if replicas is None:  # one engine (or an external server): nothing to route
        if config.replicas != 1:
            raise ValueError(f"trial {config.label} needs {config.replicas} replicas but the target "
                             "is one engine")
        return
    if len(replicas) != config.replicas:
        raise ValueError(f"trial {config.label} needs {config.replicas} replicas, the target has "
                         f"{len(replicas)}")
    engine.set_router(config.router)


def _drive(engine: LoadTarget, config: TrialConfig, profile: Profile, specs: list[RequestSpec],
           num_warmup: int, seed: int, max_duration_s: float | None,
           should_stop: StopCheck | None) -> LoadResult:
    if config.concurrency is not None:
        return run_closed_loop(engine, specs, config.concurrency, num_warmup, max_duration_s,
                               should_stop)
    if config.rate is None:
        raise ValueError(f"trial {config.policy}/b{config.batch_size} sets neither concurrency "
                         "nor rate nor speedup; set one load level")
    # The profile's rate schedule shapes the sweep's rate over time (the rate is its 1x level).
    schedule = profile.arrival.schedule if isinstance(profile.arrival, OpenArrival) else None
    arrivals = open_loop_arrivals(config.rate, config.burstiness, len(specs), seed, schedule)
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
