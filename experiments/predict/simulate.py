"""Predicted trials: the engine's own scheduler on the virtual clock, under a cost model fitted
to measured step times (Vidur's idea at the scale of this project's linear cost model).

`fit_cost_model` turns measured steps into a `CostModel` by least squares; `simulate_trial`
predicts one trial's metrics (same request lengths, seeds, warm-up and window as a real trial),
so predicted and measured points are compared metric for metric. `simulate_records` is the one
simulated trial: predictions, capacity plans and duration estimates (estimate.py) all run it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from common.details import Prediction, ProbeCalibration, TrialDetails
from common.records import SLO, RequestRecord, TrialConfig, TrialMetrics
from engine.core import StepRecord
from engine.export_marker import exported_builtin
from engine.simulate import CostModel, Simulator
from experiments.analysis.metrics import compute_trial_metrics, depth_samples, is_saturated
from experiments.load.loadgen import achieved_rate, offered_rate, record_from_sequence
from experiments.load.sim_sessions import SIM_VOCAB_SIZE, simulate_sessions
from experiments.load.workload import RequestSpec, make_requests, open_loop_arrivals
from experiments.run.trial import sched_config_of
from experiments.spec.profiles import OpenArrival, Profile, TraceArrival
from experiments.spec.traces import prepare_replay

MIN_STEPS = 3  # fewer steps of a phase than this: keep the prior's coefficients for it
MS = 1e-3
# The cost model before anything is measured. Fitted to the lean engine's steps on the C kernels
# (engine/llama.py, one engine thread, the engine's choice on 2 cores) on a 2-core CPU with one
# core busy elsewhere, as the load generator keeps it: `scripts/fit_priors.py --spin` (decode at
# 1/2/4/8/16/32 rows, contexts of 64-192 tokens; prefill of 16 to 1,024 tokens), through the
# fitter a calibration runs. builtin:small: decode 6.1/7.0/7.2/10.3/13.2/24.0 ms, prefill
# 12/38/75/153/333/794 ms for 16/64/128/256/512/1,024 tokens (a least-squares line through them
# has no fixed part, so a chunk in a mixed step costs its tokens only, as the one packed forward
# does); its matmuls dominate (weights streamed at 1 row, compute-bound from ~8). builtin:tiny:
# decode 1.0/1.0/1.3/1.9/2.5/4.6 ms, prefill 2.2/5.9/11/23/53/142 ms (its line from an
# earlier 8-round fit; these 12 rounds gave 0.89 + 0.117 ms/row). docs/benchmarks.md has them.
PRIORS: dict[str, CostModel] = {
    "builtin:tiny": CostModel(0.0, 0.137 * MS, 0.86 * MS, 0.118 * MS),
    "builtin:small": CostModel(0.0, 0.754 * MS, 5.49 * MS, 0.572 * MS),
}
GENERIC = CostModel(20 * MS, 0.2 * MS, 25 * MS, 0.5 * MS)
# Wall seconds a trial costs beyond its simulated requests (reconfigure, store writes): the
# duration estimates of sweeps and searches add it per trial.
PER_TRIAL_OVERHEAD_S = 0.1


@dataclass(frozen=True)
class BlackBoxCost(CostModel):
    """A server's step costs fitted from the client (experiments/predict/calibrate.py, refit.py), plus
    what the client saw beyond them: each probe request's TTFT minus its prompt length's median
    at 1 user (nothing queued), seconds. A simulated request's first token (and so its whole
    stream) is late by one of them, drawn with the trial's seed: a server's stalls (its HTTP
    front end, scheduling, the shared machine) are what make p90 TTFT exceed the step costs."""

    ttft_noise_s: tuple[float, ...] = ()


def prior_cost(model: str) -> CostModel:
    """The cost model before anything is measured: the built-in's prior, also for a directory
    `tradeoff export-model` wrote from it (any engine serving it: a prior from tradeoff's
    engine, not that engine's speed), else GENERIC."""
    return PRIORS.get(model) or PRIORS.get(exported_builtin(model) or "", GENERIC)


def fit_line(x: list[float], y: list[float], prior: tuple[float, float]) -> tuple[float, float]:
    """(intercept, slope) of y ~ a + b x, both >= 0; with a single x value only the level is
    identifiable, so the prior's slope is kept and the intercept fitted."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < MIN_STEPS:
        return prior
    if np.ptp(xs) == 0:
        return max(0.0, float(np.median(ys - prior[1] * xs))), prior[1]
    slope, intercept = np.polyfit(xs, ys, 1)
    if slope < 0:  # noise on a flat cost: a level, no slope
        return float(np.median(ys)), 0.0
    if intercept < 0:  # a line through the origin instead
        return 0.0, float(np.dot(xs, ys) / np.dot(xs, xs))
    return float(intercept), float(slope)


def fit_cost_model(steps: Iterable[StepRecord], prior: CostModel) -> CostModel:
    """Least-squares step times: decode ~ a + b x rows, prefill ~ c + d x prompt tokens; the
    overhead between steps is the median gap before a step that was due at once."""
    steps = list(steps)
    gaps = [s.gap_s for s in steps if s.gap_s is not None]
    overhead_s = float(np.median(gaps)) if len(gaps) >= MIN_STEPS else prior.step_overhead_s
    decode = [(s.num_seqs, s.duration_s) for s in steps if s.phase == "decode"]
    prefill = [(s.num_tokens, s.duration_s) for s in steps if s.phase == "prefill"]
    d_base, d_per_seq = fit_line([x for x, _ in decode], [y for _, y in decode],
                                 (prior.decode_base_s, prior.decode_per_seq_s))
    p_base, p_per_tok = fit_line([x for x, _ in prefill], [y for _, y in prefill],
                                 (prior.prefill_base_s, prior.prefill_per_token_s))
    return CostModel(p_base, p_per_tok, d_base, d_per_seq, overhead_s)


def simulate_records(config: TrialConfig, profile: Profile, num_requests: int, cost: CostModel,
                     seed: int = 0, kv_budget_tokens: int = 1 << 30, slos: list[SLO] = (),
                     ) -> tuple[list[RequestRecord], list[RequestRecord], list[StepRecord]]:
    """Measured records, background records and steps of one simulated trial: the engine's
    scheduler as the trial configures it (`sched_config_of`: the token budget, the adaptive
    policy's SLO targets), driven as the trial's load generator drives the real one."""
    sim = Simulator(sched_config_of(config, slos), cost, kv_budget_tokens, config.replicas, config.router,
                    seed)
    if profile.session is not None and config.speedup is None:  # conversations, turn by turn
        measured, background = simulate_sessions(sim, config, profile, num_requests, seed)
        return measured, background, sim.steps
    num_warmup, num_measured = _submit_load(sim, config, profile, num_requests, seed)
    records = [record_from_sequence(s, i) for i, s in enumerate(sim.run())]
    measured = [r for i, r in enumerate(records) if num_warmup <= i < num_warmup + num_measured]
    background = [r for i, r in enumerate(records) if not num_warmup <= i < num_warmup + num_measured]
    return measured, background, sim.steps


def _submit_load(sim: Simulator, config: TrialConfig, profile: Profile, num_requests: int,
                 seed: int) -> tuple[int, int]:
    """Submit the trial's requests as trial.run_trial sends them; (warm-up, measured) counts."""
    if config.speedup is not None and isinstance(profile.arrival, TraceArrival):
        replay = prepare_replay(profile.arrival, config.speedup)  # the window sets the count
        lengths = list(zip(replay.prompt_tokens.tolist(), replay.output_tokens.tolist(), strict=True))
        num_warmup = min(profile.warmup_requests, len(lengths) - 1)
        for at_s, (p, o) in zip(replay.arrival_s.tolist(), lengths, strict=True):
            sim.submit_at(at_s, p, o)
        return num_warmup, len(lengths) - num_warmup
    n = num_requests + profile.warmup_requests
    # Real prompts (shared prefixes included), for a prefix cache and a prefix router to match.
    specs = make_requests(profile, n, seed, vocab_size=SIM_VOCAB_SIZE, max_context_tokens=1 << 20,
                          avoid_ids=[])
    if config.concurrency is not None:
        _closed_loop(sim, specs, config.concurrency, profile.warmup_requests)
    else:
        schedule = profile.arrival.schedule if isinstance(profile.arrival, OpenArrival) else None
        for at_s, s in zip(open_loop_arrivals(config.rate, config.burstiness, n, seed, schedule),
                           specs, strict=True):
            sim.submit_at(at_s, len(s.prompt_ids), s.max_new_tokens, prompt_ids=s.prompt_ids)
    return profile.warmup_requests, num_requests


def _closed_loop(sim: Simulator, specs: list[RequestSpec], concurrency: int,
                 num_warmup: int) -> None:
    # As the real closed loop: each user sends again when its request ends, cycling through the
    # specs (cooldown) until every measured request has ended.
    state = {"issued": 0, "measured_left": len(specs) - num_warmup}

    def issue(at_s: float) -> None:
        idx = state["issued"]
        state["issued"] += 1
        s = specs[idx % len(specs)]
        sim.submit_at(at_s, len(s.prompt_ids), s.max_new_tokens, on_finish=lambda seq: finished(idx, seq),
                      prompt_ids=s.prompt_ids)

    def finished(idx: int, seq) -> None:
        if num_warmup <= idx < len(specs):
            state["measured_left"] -= 1
        if state["measured_left"] > 0:
            issue(seq.done_s)

    for _ in range(concurrency):
        issue(0.0)


def simulate_trial(config: TrialConfig, profile: Profile, num_requests: int, cost: CostModel,
                   slos: list[SLO], seed: int = 0) -> TrialMetrics:
    """Predicted metrics of one trial under `cost`."""
    measured, background, steps = simulate_records(config, profile, num_requests, cost, seed,
                                                   slos=slos)
    measured = with_ttft_noise(measured, getattr(cost, "ttft_noise_s", ()), seed)
    saturated = False
    if config.concurrency is None:  # open loop: the measured trial's rule (docs/metrics.md)
        sent = sorted(r.scheduled_s for r in measured)
        depths = depth_samples(sent, measured + background, by_admission=True)
        saturated = is_saturated(depths, offered_rate(sent), achieved_rate(measured),
                                 config.batch_size)
    return compute_trial_metrics(measured, steps, slos, None, saturated, background)


def with_ttft_noise(records: list[RequestRecord], noise_s: Sequence[float],
                    seed: int) -> list[RequestRecord]:
    """Each record's stream delayed by a residual drawn from `noise_s` (seeded); a negative
    one takes at most half the simulated TTFT off. No noise: the records unchanged."""
    if not noise_s:
        return records
    rng, out = random.Random(seed), []
    for r in records:
        if not r.token_times_s or r.done_s is None:
            out.append(r)
            continue
        shift = max(noise_s[rng.randrange(len(noise_s))], -0.5 * (r.token_times_s[0] - r.scheduled_s))
        out.append(replace(r, token_times_s=tuple(t + shift for t in r.token_times_s),
                           done_s=r.done_s + shift))
    return out


def relative_errors(predicted: dict, measured: dict, keys: Iterable[str]) -> dict[str, float]:
    """(predicted - measured) / measured per key, where both exist and measured is non-zero."""
    out: dict[str, float] = {}
    for key in keys:
        p, m = predicted.get(key), measured.get(key)
        if isinstance(p, (int, float)) and isinstance(m, (int, float)) and m:
            out[key] = (p - m) / m
    return out


# -- stored step summaries and per-trial predictions ---------------------------------------------

MAX_PREFILL_SAMPLES = 64  # prefill steps kept per trial (evenly spaced): enough for two numbers
PREDICTED_KEYS = ("output_tokens_per_s", "requests_per_s", "ttft_ms_p50", "ttft_ms_p90",
                  "tpot_ms_p50", "tpot_ms_p90", "e2e_ms_p90", "slo_attainment")


def step_summary(steps: list[StepRecord]) -> dict:
    """A compact, JSON-ready summary of a trial's steps that a later fit can read back:
    decode steps grouped by rows (count, mean seconds), a sample of prefill steps."""
    decode: dict[int, list[float]] = {}
    for s in steps:
        if s.phase == "decode":
            decode.setdefault(s.num_seqs, []).append(s.duration_s)
    prefill = [[s.num_tokens, s.duration_s] for s in steps if s.phase == "prefill"]
    stride = max(1, len(prefill) // MAX_PREFILL_SAMPLES)
    gaps = [s.gap_s for s in steps if s.gap_s is not None]
    return {"decode": [[n, len(d), float(np.mean(d))] for n, d in sorted(decode.items())],
            "prefill": prefill[::stride][:MAX_PREFILL_SAMPLES],
            "gap": [float(np.median(gaps)), len(gaps)] if gaps else None}


def steps_of_summary(summary: dict) -> list[StepRecord]:
    """Steps standing for a summary (decode groups as repeated means, at most 50 per group, each
    carrying the trial's median gap between steps)."""
    gap = summary.get("gap")
    gap_s = float(gap[0]) if gap else None
    out = [StepRecord(0.0, mean_s, "decode", int(n), int(n), gap_s=gap_s)
           for n, count, mean_s in summary.get("decode", []) for _ in range(min(int(count), 50))]
    out += [StepRecord(0.0, float(d), "prefill", 1, int(t)) for t, d in summary.get("prefill", [])]
    return out


def stored_steps(details_list: Iterable[TrialDetails]) -> list[StepRecord]:
    """Every stored trial's summarised steps, for a fit."""
    return [s for d in details_list if d.prediction is not None
            for s in steps_of_summary(d.prediction.steps)]


def cost_to_dict(cost: CostModel) -> dict:
    """Milliseconds, for details and the UI (a black-box fit's TTFT residuals too)."""
    out = {"prefill_base_ms": cost.prefill_base_s * 1e3,
           "prefill_per_token_ms": cost.prefill_per_token_s * 1e3,
           "decode_base_ms": cost.decode_base_s * 1e3, "decode_per_seq_ms": cost.decode_per_seq_s * 1e3,
           "step_overhead_ms": cost.step_overhead_s * 1e3}
    if isinstance(cost, BlackBoxCost):
        out["ttft_noise_ms"] = [round(e * 1e3, 3) for e in cost.ttft_noise_s]
    return out


def cost_from_dict(d: dict) -> CostModel:
    """The inverse of cost_to_dict."""
    costs = (d["prefill_base_ms"] / 1e3, d["prefill_per_token_ms"] / 1e3,
             d["decode_base_ms"] / 1e3, d["decode_per_seq_ms"] / 1e3,
             d.get("step_overhead_ms", 0.0) / 1e3)
    if "ttft_noise_ms" in d:
        return BlackBoxCost(*costs, tuple(e / 1e3 for e in d["ttft_noise_ms"]))
    return CostModel(*costs)


def stored_calibration(details: Iterable[TrialDetails]) -> CostModel | None:
    """The black-box calibration a sweep stored (a server's probes, experiments/predict/calibrate.py,
    with its first trial), as last refitted to measured trials (`prediction.refit`, stored with
    the trial that refined it); None for a sweep calibrated from engine steps or not at all."""
    latest = None
    for d in details:
        prediction = d.prediction
        if prediction is None:
            continue
        fitted = (prediction.refit or prediction.calibration or ProbeCalibration()).cost_model
        if fitted and (latest is None or prediction.refit is not None):
            latest = cost_from_dict(fitted)
    return latest


def prediction_details(config: TrialConfig, profile: Profile, num_requests: int, seed: int,
                       slos: list[SLO], cost: CostModel, measured: TrialMetrics,
                       steps: list[StepRecord]) -> Prediction:
    """`details.prediction` of a trial: what `cost` (fitted before this trial) predicted, the
    relative error against what was measured, and this trial's own steps for later fits."""
    predicted = simulate_trial(config, profile, num_requests, cost, slos, seed).flat()
    kept = {k: predicted.get(k) for k in PREDICTED_KEYS}
    return Prediction(cost_model=cost_to_dict(cost), predicted=kept,
                      error=relative_errors(kept, measured.flat(), PREDICTED_KEYS),
                      steps=step_summary(steps))


def predict_points(configs: Iterable[TrialConfig], profile: Profile, num_requests: int,
                   cost: CostModel, slos: list[SLO], seed: int = 0) -> list[tuple[TrialConfig, dict]]:
    """Predicted flat metrics (PREDICTED_KEYS) of each config (trace trials are skipped)."""
    out = []
    for config in configs:
        if config.speedup is None:
            flat = simulate_trial(config, profile, num_requests, cost, slos, seed).flat()
            out.append((config, {k: flat.get(k) for k in PREDICTED_KEYS}))
    return out
