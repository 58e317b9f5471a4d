"""A server's black-box cost model refitted as measured trials arrive (issue 22).

The probes (experiments/predict/calibrate.py) fit the step costs from two clean experiments; a measured
trial adds what they miss (decode under real prompt lengths and batch sizes, the server's time
between steps, the HTTP front end under load). Only what the client sees is used: each trial's
output tok/s, p50 TPOT and p50 TTFT at its known load and server config, compared with the same
trial simulated (simulate.simulate_trial: same requests, seeds and scheduler). The fit minimises
the squared log-ratio errors of the probes and of those metrics over the four step costs, in
log space (so every parameter stays positive and every metric weighs by relative error),
by Levenberg-Marquardt with a finite-difference Jacobian, warm-started from the last fit, with
a mild pull toward the probes' own fit so that one noisy trial cannot swing it. p90s are not
fitted: they are what the TTFT residuals (simulate.BlackBoxCost) and the error band describe.
Whether the refit or the probes' fit predicts next is decided on held-out trials (`HeldOut`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from common.records import SLO, TrialConfig
from engine.simulate import CostModel
from experiments.predict.simulate import simulate_trial
from experiments.spec.profiles import Profile

FIT_KEYS = ("output_tokens_per_s", "tpot_ms_p50", "ttft_ms_p50")
PARAMS = ("prefill_base_s", "prefill_per_token_s", "decode_base_s", "decode_per_seq_s")
# Below these a cost is "none": a parameter the probes put at 0 starts here, so trials can
# still reveal it (e.g. a decode slope a server capped at 4 running could not show).
FLOORS = (1e-4, 1e-7, 1e-4, 1e-6)
MAX_TRIALS = 8  # the latest trials fitted: each costs one simulation per Jacobian column
ANCHOR_WEIGHT = 0.3  # per log-unit away from the probes' fit, as one metric's log error
STEP = 0.05  # finite-difference step, log units
MAX_MOVE = 1.5  # at most e^1.5 per iteration: a bad linearisation cannot overshoot far
TOL = 1e-3  # a step under 0.1% in every cost: converged (no prediction moves by that much)
CHORD_MOVE = 0.1  # after an accepted step under ~10% in every cost the Jacobian is kept


@dataclass(frozen=True)
class Observed:
    """One measured trial as fit evidence: its config, the measured flat metrics, and what
    simulating it needs (measured requests, seed)."""

    config: TrialConfig
    metrics: dict
    num_requests: int
    seed: int


@dataclass(frozen=True)
class PointProbe:
    """A probe's reading for the fit: kind prefill (x = prompt tokens) or decode (x = running)."""

    kind: str
    x: int
    seconds: float


def refit(cost: CostModel, anchor: CostModel, probes: Sequence[PointProbe],
          observed: Sequence[Observed], profile: Profile, slos: list[SLO],
          iterations: int = 3) -> CostModel:
    """`cost` moved to fit the probes and the latest MAX_TRIALS observed trials (see the module
    doc); `anchor` is the probes' own fit. Non-cost fields (step overhead, TTFT residuals) are
    kept."""
    observed = list(observed)[-MAX_TRIALS:]
    fitter = _Fitter(cost, anchor, probes, observed, profile, slos)
    return fitter.cost_of(fitter.solve(iterations))


@dataclass(frozen=True)
class HeldOut:
    """Whether refitting has earned its place: each clean trial, before it is fitted, predicted
    by the refit so far and by the probes' fit alone (the sum of their squared log errors over
    FIT_KEYS). A refit predicts only while it has done better on trials it had not seen: on a
    machine that changed between trials, chasing them can predict worse than the probes."""

    refit: float = 0.0
    probes: float = 0.0
    num_trials: int = 0

    def judged(self, observed: Observed, chain: CostModel, probes_fit: CostModel, profile: Profile,
               slos: list[SLO]) -> HeldOut:
        """These totals with `observed` predicted by `chain` (the refit before it) and the probes."""
        loss = [sum(e * e for e in log_errors(c, observed, profile, slos)) for c in (chain, probes_fit)]
        return HeldOut(self.refit + loss[0], self.probes + loss[1], self.num_trials + 1)

    @property
    def trusts_refit(self) -> bool:
        return self.refit < self.probes


def log_errors(cost: CostModel, observed: Observed, profile: Profile, slos: list[SLO]) -> list[float]:
    """log(predicted / measured) of FIT_KEYS for one trial simulated under `cost`."""
    flat = simulate_trial(observed.config, profile, observed.num_requests, cost, slos, observed.seed).flat()
    return [math.log(flat[k] / observed.metrics[k]) for k in FIT_KEYS
            if (flat.get(k) or 0) > 0 and (observed.metrics.get(k) or 0) > 0]


def fit_probes(cost: CostModel, probes: Sequence[PointProbe], iterations: int = 8) -> CostModel:
    """The probes alone, by relative error (a line through 16 and 1,024 tokens fitted by
    absolute error misses the short prompts chat sends); a cost at 0 starts at its floor."""
    fitter = _Fitter(cost, None, probes, [], None, [])
    return fitter.cost_of(fitter.solve(iterations))


class _Fitter:
    def __init__(self, cost: CostModel, anchor: CostModel | None, probes: Sequence[PointProbe],
                 observed: list[Observed], profile: Profile | None, slos: list[SLO],
                 free: tuple[int, ...] = tuple(range(len(PARAMS)))) -> None:
        self.base, self.probes, self.observed = cost, list(probes), observed
        self.profile, self.slos, self.free = profile, slos, free
        self.theta0 = _theta(cost)
        self.anchor = None if anchor is None else _theta(anchor)

    def cost_of(self, theta: np.ndarray) -> CostModel:
        return replace(self.base, **{PARAMS[i]: float(math.exp(theta[i])) for i in self.free})

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        cost = self.cost_of(theta)
        out = [math.log(_probe_s(cost, p) / p.seconds) for p in self.probes if p.seconds > 0]
        for o in self.observed:
            out += log_errors(cost, o, self.profile, self.slos)
        if self.anchor is not None:  # parameters the probes left at their floor are not anchored
            out += [ANCHOR_WEIGHT * (theta[i] - self.anchor[i]) for i in self.free
                    if self.anchor[i] > math.log(FLOORS[i]) + 1e-9]
        return np.asarray(out, dtype=float)

    def solve(self, iterations: int) -> np.ndarray:
        """Levenberg-Marquardt. The Jacobian (a simulation of every trial per cost) is kept
        after a short accepted step (a chord step: over moves of a few % the log metrics are
        near linear in the log costs) and recomputed after a long one or where a step failed on
        a stale one; a step below TOL ends it. Refits warm-started from the last one move a few
        % and take one Jacobian, not one per iteration."""
        theta, lam = self.theta0.copy(), 1e-2
        r = self.residuals(theta)
        if not r.size or not self.free:
            return theta
        loss, jac, fresh = float(r @ r), None, False
        for _ in range(iterations):
            if jac is None:
                jac, fresh = self._jacobian(theta, r), True
            a = jac.T @ jac
            step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), -jac.T @ r)
            if np.abs(step).max() < TOL:
                break
            trial = theta.copy()
            trial[list(self.free)] += np.clip(step, -MAX_MOVE, MAX_MOVE)
            r2 = self.residuals(trial)
            if float(r2 @ r2) < loss:
                theta, r, loss, lam, fresh = trial, r2, float(r2 @ r2), lam / 3, False
                if np.abs(step).max() > CHORD_MOVE:  # a long move: linearise again where it landed
                    jac = None
            else:
                lam *= 5
                jac = jac if fresh else None  # stale: take it again here before giving up on it
        return theta

    def _jacobian(self, theta: np.ndarray, r: np.ndarray) -> np.ndarray:
        jac = np.zeros((r.size, len(self.free)))
        for col, i in enumerate(self.free):
            moved = theta.copy()
            moved[i] += STEP
            jac[:, col] = (self.residuals(moved) - r) / STEP
        return jac


def _theta(cost: CostModel) -> np.ndarray:
    return np.log([max(getattr(cost, n), f) for n, f in zip(PARAMS, FLOORS, strict=True)])


def _probe_s(cost: CostModel, probe: PointProbe) -> float:
    return cost.prefill_s(1, probe.x) if probe.kind == "prefill" else cost.decode_s(probe.x)
