"""Black-box calibration: the simulator's step-cost model fitted to a few probes of a running
server, so any engine (vLLM, SGLang, a `--target` URL) gets predictions, not only tradeoff's own.

Two probes, both through the same load generator as trials, both seen only from the client:

- prefill: TTFT against prompt length at 1 user (prompts of PROMPT_LENGTHS tokens, 2 output
  tokens, PROBE_REPEATS each, the median per length). At 1 user nothing queues, so TTFT =
  client round trip + one prefill step: the line's slope is the per-token prefill cost, its
  intercept the step's fixed cost plus the round trip. Each request's distance from its
  length's median is kept (`spread_s`): the server's own stalls, which the simulator adds to
  predicted TTFTs (simulate.BlackBoxCost) so that p90 TTFT is not just the step costs.
- decode: time per output token against running requests (closed loop at USER_LEVELS users up
  to the server's cap, short prompts, DECODE_TOKENS forced output tokens, the median TPOT per
  level). Between a request's first and last token the server runs decode steps, so TPOT =
  one decode step of ~C rows (plus the server's time between steps): a line in C.

The fit is a `BlackBoxCost` (a CostModel, engine/simulate.py, plus those residuals): least-squares
lines, then refined by relative error (experiments/predict/refit.py); a search or sweep refits it to
every measured trial as it arrives (refit.refit). `predict_grid` runs the engine's scheduler
(continuous batching, a cap on running requests, an optional per-step token budget, as
vLLM's --max-num-seqs and --max-num-batched-tokens) on the virtual clock under it.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from common.details import Prediction, ProbeCalibration, Refit
from common.records import SLO, TrialConfig, TrialRecord
from engine.simulate import CostModel
from experiments.analysis.metrics import latency_samples
from experiments.load.loadgen import LoadTarget, run_closed_loop
from experiments.load.workload import RequestSpec
from experiments.predict.refit import MAX_TRIALS, HeldOut, Observed, PointProbe, fit_probes, refit
from experiments.predict.simulate import (
    PREDICTED_KEYS,
    BlackBoxCost,
    cost_from_dict,
    cost_to_dict,
    fit_line,
    simulate_trial,
)
from experiments.spec.grid import SweepSpec
from experiments.spec.profiles import Profile

PROMPT_LENGTHS: tuple[int, ...] = (16, 128, 512, 1024)
USER_LEVELS: tuple[int, ...] = (1, 2, 4, 8, 16)
PROBE_REPEATS = 8
DECODE_TOKENS = 32
DECODE_PROMPT_TOKENS = 16


@dataclass(frozen=True)
class Probe:
    """One probe's reading: `kind` prefill (x = prompt tokens, TTFT) or decode (x = users, TPOT)."""

    kind: str
    x: int
    seconds: float
    samples: int
    spread_s: tuple[float, ...] = ()  # prefill: each request's TTFT minus the median


@dataclass(frozen=True)
class Calibration:
    """The fitted cost model, the probes it was fitted to, and each probe's fit error."""

    cost: CostModel
    probes: tuple[Probe, ...]

    def fitted_s(self, probe: Probe) -> float:
        """What the cost model says the probe should have read."""
        if probe.kind == "prefill":
            return self.cost.prefill_s(1, probe.x)
        return self.cost.decode_s(probe.x)

    def to_dict(self) -> dict:
        return {"cost_model": asdict(self.cost),
                "probes": [{**asdict(p), "fitted_s": self.fitted_s(p),
                            "error": self.fitted_s(p) / p.seconds - 1 if p.seconds else None}
                           for p in self.probes]}


def probe_server(target: LoadTarget, *, vocab_size: int, max_context_tokens: int,
                 avoid_ids: Sequence[int], max_running: int = 16, seed: int = 0) -> list[Probe]:
    """Both probes against a running server (see the module doc); a few seconds to a minute."""
    rng = random.Random(seed)
    allowed = [i for i in range(vocab_size) if i not in set(avoid_ids)]

    def prompt(n: int) -> list[int]:
        return [rng.choice(allowed) for _ in range(n)]

    probes = []
    for length in (n for n in PROMPT_LENGTHS if n + 8 < max_context_tokens):
        specs = [RequestSpec(prompt(length), 2) for _ in range(PROBE_REPEATS + 1)]
        ttft = latency_samples(run_closed_loop(target, specs, 1, num_warmup=1).records)["ttft_ms"]
        if ttft:
            mid = statistics.median(ttft)
            probes.append(Probe("prefill", length, mid / 1000, len(ttft),
                                tuple(round((t - mid) / 1000, 6) for t in ttft)))
    for users in sorted({u for u in USER_LEVELS if u <= max_running} | {max_running}):
        specs = [RequestSpec(prompt(DECODE_PROMPT_TOKENS), DECODE_TOKENS) for _ in range(3 * users)]
        tpot = latency_samples(run_closed_loop(target, specs, users, num_warmup=users).records)["tpot_ms"]
        if tpot:
            probes.append(Probe("decode", users, statistics.median(tpot) / 1000, len(tpot)))
    return probes


def fit(probes: Sequence[Probe]) -> Calibration:
    """The cost model through the probes (least squares; a line needs two distinct x)."""
    prefill = [(p.x, p.seconds) for p in probes if p.kind == "prefill"]
    decode = [(p.x, p.seconds) for p in probes if p.kind == "decode"]
    if not prefill or not decode:
        raise ValueError("calibration needs at least one prefill and one decode probe; the server "
                         "answered too few (see its log)")
    # fit_line keeps costs >= 0 and, with fewer than 3 points, the prior: a flat level.
    p_base, p_per_token = _line(prefill)
    d_base, d_per_seq = _line(decode)
    noise = tuple(e for p in probes if p.kind == "prefill" for e in p.spread_s)
    cost = BlackBoxCost(p_base, p_per_token, d_base, d_per_seq, 0.0, noise)
    if len(prefill) >= 3 and len(decode) >= 3:
        cost = fit_probes(cost, point_probes(probes))
    return Calibration(cost, tuple(probes))


def point_probes(probes: Sequence[Probe] | Sequence[dict]) -> list[PointProbe]:
    """Probes (or their stored dicts) as the refit reads them."""
    out = []
    for p in probes:
        d = asdict(p) if isinstance(p, Probe) else p
        out.append(PointProbe(d["kind"], int(d["x"]), float(d["seconds"])))
    return out


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    ys = [y for _, y in points]
    return fit_line([x for x, _ in points], ys, (statistics.median(ys), 0.0))


def predict_grid(cost: CostModel, profile: Profile, configs: Sequence[TrialConfig], num_requests: int,
                 slos: Sequence[SLO] = (), seed: int = 0) -> list[tuple[TrialConfig, dict]]:
    """Each config's predicted metrics (PREDICTED_KEYS) under the calibrated cost model."""
    return [(c, {k: simulate_trial(c, profile, num_requests, cost, list(slos), seed).flat().get(k)
                 for k in PREDICTED_KEYS}) for c in configs]


def prediction_errors(predicted: dict, measured: dict) -> dict[str, float | None]:
    """predicted / measured - 1 per predicted metric (None where either is missing or zero)."""
    return {k: (predicted[k] / measured[k] - 1 if predicted.get(k) and measured.get(k) else None)
            for k in PREDICTED_KEYS}


def refit_details(trials: Sequence[TrialRecord], prediction: Prediction, spec: SweepSpec,
                  profile: Profile, slos: Sequence[SLO], config: TrialConfig, measured: dict,
                  cost: CostModel) -> Refit:
    """`prediction.refit` of a trial just measured on a calibrated server: the refit chain
    (refit.refit, warm-started from the last one, anchored to the probes' fit) moved by this
    trial if it is clean evidence (not client-bound), and the fit that predicts next
    (`cost_model`, which simulate.stored_calibration reads back): the refit while it predicted
    the trials it had not seen better than the probes alone (refit.HeldOut), else the probes'."""
    calibration = prediction.calibration or _stored_probes(trials)
    latest = _latest_refit(trials)
    chain = cost_from_dict(latest.chain or latest.cost_model) if latest else cost
    held_out = HeldOut(**latest.held_out) if latest and latest.held_out else HeldOut()
    new = Observed(config, measured, spec.requests_for(config), spec.load.seed + config.repetition)
    observed = [*observed_of(trials, spec), *([] if measured.get("client_bound") else [new])]
    anchor = cost_from_dict(calibration.cost_model) if calibration else cost
    try:
        if observed and observed[-1] is new:
            held_out = held_out.judged(new, chain, anchor, profile, list(slos))
            probes = point_probes(calibration.probes) if calibration else []
            chain = refit(chain, anchor, probes, observed, profile, list(slos))
    except Exception as exc:  # noqa: BLE001 - a refit only sharpens predictions; keep the last fit
        return Refit(cost_model=cost_to_dict(cost), failed=f"{type(exc).__name__}: {exc}")
    return Refit(cost_model=cost_to_dict(chain if held_out.trusts_refit else anchor),
                 chain=cost_to_dict(chain), held_out=asdict(held_out),
                 uses_refit=held_out.trusts_refit, trials=min(len(observed), MAX_TRIALS))


def _latest_refit(trials: Sequence[TrialRecord]) -> Refit | None:
    """The refit stored last (by trial id), failed ones skipped."""
    refits = [(t.trial_id, r) for t in trials if t.details.prediction is not None
              and (r := t.details.prediction.refit) is not None and r.failed is None]
    return max(refits, key=lambda ir: ir[0])[1] if refits else None


def observed_of(trials: Sequence[TrialRecord], spec: SweepSpec) -> list[Observed]:
    """Stored trials that are fit evidence: done, not client-bound, not a trace replay."""
    return [Observed(t.config, t.metrics, spec.requests_for(t.config), spec.load.seed + t.config.repetition)
            for t in trials if t.status == "done" and t.metrics and not t.metrics.get("client_bound")
            and t.config.speedup is None]


def _stored_probes(trials: Sequence[TrialRecord]) -> ProbeCalibration | None:
    for t in trials:
        prediction = t.details.prediction
        if prediction is not None and prediction.calibration is not None:
            return prediction.calibration
    return None
