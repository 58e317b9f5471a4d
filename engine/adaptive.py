"""The `adaptive` batching policy's decisions: pure functions of what the scheduler sees.

Continuous batching whose batch cap and batching wait are chosen at every step, not fixed:

- **Cap** (TPOT): the largest batch, up to the configured `max_batch_size`, whose predicted
  time per output token stays within `TPOT_HEADROOM` x the TPOT SLO (the ceiling when no
  batch size can meet it: then capping saves no TPOT and only costs throughput). A running sequence's
  TPOT is the decode step time plus the prefills that interrupt it (no chunked prefill), so
  `tpot(n) = decode_s(n) + n x stall_per_row_s`: decode time is fitted as `a + b n` by least
  squares over the recent steps, and the stall is the recent prefill seconds per decoded row.
- **Cap yields to TTFT at risk**: once the oldest viable waiter has used `PRESSURE_SHARE` of
  its TTFT SLO (less its predicted prefill), the cap is lifted to `max_batch_size`: a capped
  batch that serves slower than requests arrive would lose every queued request's TTFT.
- **Cap protects viable rows only**: when no running request can still meet its SLOs (each
  missed its TTFT), a smaller batch protects nobody's TPOT and only slows the backlog down, so
  the cap is lifted (under overload this keeps adaptive from serving slower than continuous).
- **Wait** (TTFT): arrivals are held back to join in groups (one prefill stalls the batch
  once instead of once each) for at most the configured `max_wait_ms` *and* at most
  `WAIT_SHARE` of the TTFT SLO, minus the predicted prefill time; with nothing running there is
  no batch to stall, so they join at once, and likewise while the running rows' predicted TPOT
  with one more row stays under `WAIT_TPOT_SHARE` of the TPOT SLO: grouping then protects no
  one's TPOT and only spends TTFT.
- **Order** (goodput): a waiting request whose TTFT SLO is already lost cannot count toward
  goodput any more; it yields its place to requests that can still meet theirs (FIFO within
  each group), and runs as soon as none of those waits.

No clock, no torch: the scheduler passes `now` and reports each executed step to `observe`.
It runs on the engine thread between steps, so the fit is refreshed once per observed step
(not once per candidate batch size) and the cap is solved in closed form: the policy's own
time would otherwise be a step overhead the fixed policies do not pay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.sequence import Sequence

# Aim the predicted TPOT at this fraction of the SLO. 1.0, not lower: a smaller cap also costs
# TTFT (the queue grows), and in simulations of the azure-conv trace a 0.9 aim lost more
# requests to TTFT than it saved from TPOT.
TPOT_HEADROOM = 1.0
# Share of the TTFT SLO the policy may spend holding arrivals back to group their prefills
# (0.5 matched the best fixed wait in those simulations; 0.25 grouped too little).
WAIT_SHARE = 0.5
# Hold arrivals back only once the predicted TPOT (with one more row) nears the TPOT SLO:
# above this share of it. Below, a wait costs TTFT and saves nothing that counts (measured on
# azure-conv at 2x with tight SLOs: a 20 ms wait ceiling lost 0.035 attainment against none).
WAIT_TPOT_SHARE = 0.8
# Share of the TTFT SLO a viable waiter may lose to the TPOT cap before the cap is lifted.
PRESSURE_SHARE = 0.5
# Steps (prefill and decode) the cost fit and the stall estimate look back over.
WINDOW_STEPS = 64


@dataclass
class AdaptiveState:
    """Recent step times, and the decisions derived from them, for one scheduler config."""

    config: SchedulerConfig
    # (phase, rows, tokens, seconds) of the last WINDOW_STEPS executed steps
    steps: deque[tuple[str, int, int, float]] = field(
        default_factory=lambda: deque(maxlen=WINDOW_STEPS))
    _fit: _Fit | None = field(default=None, repr=False)  # of `steps`; None: to be refreshed

    def observe(self, phase: str, num_seqs: int, num_tokens: int, duration_s: float) -> None:
        """Record one executed step."""
        self.steps.append((phase, num_seqs, num_tokens, duration_s))
        self._fit = None

    @property
    def fit(self) -> _Fit:
        """What the recent steps say (computed once per observed step)."""
        if self._fit is None:
            self._fit = _Fit.of(self.steps)
        return self._fit

    def decode_s(self, num_seqs: int) -> float | None:
        """Predicted decode step time at `num_seqs` rows; None before any decode step."""
        fit = self.fit
        return None if fit.decode is None else fit.decode[0] + fit.decode[1] * num_seqs

    def prefill_s(self, num_tokens: int) -> float:
        """Predicted prefill time for `num_tokens` prompt tokens (0 before any prefill)."""
        return self.fit.prefill_per_token_s * num_tokens

    def stall_per_row_s(self) -> float:
        """Recent prefill seconds per decoded row: the share of each token spent on joins."""
        return self.fit.stall_per_row_s

    def predicted_tpot_s(self, num_seqs: int) -> float | None:
        """Decode step time plus the prefill stalls a row sees, at `num_seqs` rows."""
        decode = self.decode_s(num_seqs)
        return None if decode is None else decode + num_seqs * self.stall_per_row_s()

    def batch_cap(self) -> int:
        """The largest batch (<= max_batch_size) predicted to keep TPOT within the SLO."""
        limit, slo_ms = self.config.max_batch_size, self.config.tpot_slo_ms
        fit = self.fit
        if slo_ms is None or fit.decode is None:
            return limit  # nothing to steer by yet: behave as continuous
        # TPOT(n) = base + n x (slope + stall) grows with n: the rows that fit are 1..n_max.
        target_s = TPOT_HEADROOM * slo_ms / 1000.0
        base_s, per_row_s = fit.decode[0], fit.decode[1] + fit.stall_per_row_s
        if base_s + per_row_s > target_s:
            return limit  # unreachable even alone: a small batch would only lose throughput
        if per_row_s <= 0:
            return limit
        # 1e-12: a TPOT exactly on the target fits, whatever the float rounding of the division
        return max(1, min(limit, int((target_s - base_s) / per_row_s + 1e-12)))

    def protects_nobody(self, running: list[Sequence], now_s: float) -> bool:
        """Whether every running request has already lost its TTFT SLO (so capping the batch
        for their TPOT gains no goodput). False with nothing running or no TTFT target."""
        slo_ms = self.config.ttft_slo_ms
        if slo_ms is None or not running:
            return False
        slo_s = slo_ms / 1000.0
        for seq in running:
            first_s = seq.token_times_s[0] if seq.token_times_s else now_s
            if first_s - seq.scheduled_s <= slo_s:
                return False
        return True

    def is_ttft_at_risk(self, head: Sequence, now_s: float) -> bool:
        """Whether the oldest viable waiter's TTFT SLO is at risk: it has waited `PRESSURE_SHARE`
        of its budget (less its predicted prefill). Then the TPOT cap is lifted: a missed TTFT
        loses the request for sure, a batch over the TPOT cap only for a while."""
        slo_ms = self.config.ttft_slo_ms
        if slo_ms is None or head.scheduled_s < now_s - slo_ms / 1000.0:
            return False  # no TTFT target, or already lost: no reason to stretch the batch
        waited_s = now_s - head.scheduled_s + self.prefill_s(head.num_prompt_tokens)
        return waited_s >= PRESSURE_SHARE * slo_ms / 1000.0

    def wait_s(self, head: Sequence, num_running: int) -> float:
        """How long `head` (the oldest viable waiter) may be held back to join in a group."""
        if not num_running:
            return 0.0
        tpot_slo_ms = self.config.tpot_slo_ms
        tpot_s = self.predicted_tpot_s(num_running + 1)
        if tpot_slo_ms is not None and tpot_s is not None \
                and tpot_s <= WAIT_TPOT_SHARE * tpot_slo_ms / 1000.0:
            return 0.0  # the running rows can afford its prefill now
        wait_s = self.config.max_wait_ms / 1000.0
        if self.config.ttft_slo_ms is None:
            return wait_s
        budget_s = WAIT_SHARE * self.config.ttft_slo_ms / 1000.0 - self.prefill_s(head.num_prompt_tokens)
        return min(wait_s, max(0.0, budget_s))

    def reorder(self, waiting: deque[Sequence], now_s: float) -> deque[Sequence]:
        """Requests that can still meet their TTFT SLO first, lost ones after (FIFO in each)."""
        slo_ms = self.config.ttft_slo_ms
        if slo_ms is None or len(waiting) < 2:
            return waiting
        cutoff_s = now_s - slo_ms / 1000.0  # scheduled before this: TTFT already missed
        viable = [s for s in waiting if s.scheduled_s >= cutoff_s]
        if not viable or len(viable) == len(waiting):
            return waiting
        return deque(viable + [s for s in waiting if s.scheduled_s < cutoff_s])


@dataclass(frozen=True)
class _Fit:
    """The step-time figures the decisions use, from one window of steps."""

    decode: tuple[float, float] | None  # (base, per row) seconds; None before any decode
    prefill_per_token_s: float
    stall_per_row_s: float

    @classmethod
    def of(cls, steps: deque[tuple[str, int, int, float]]) -> _Fit:
        points = [(n, s) for phase, n, _, s in steps if phase == "decode"]
        prefill_tokens = sum(k for phase, _, k, _ in steps if phase == "prefill")
        prefill_s = sum(s for phase, _, _, s in steps if phase == "prefill")
        rows = sum(n for n, _ in points)
        return cls(fit_linear(points) if points else None,
                   prefill_s / prefill_tokens if prefill_tokens else 0.0,
                   prefill_s / rows if rows else 0.0)


def fit_linear(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (base, slope) of seconds over rows, neither negative.

    With a single batch size seen the two cannot be told apart; the fit is then flat (the
    step costs what it cost), so the cap may grow and the next steps show the slope.
    """
    num = len(points)
    mean_n = sum(n for n, _ in points) / num
    mean_s = sum(s for _, s in points) / num
    var_n = sum((n - mean_n) ** 2 for n, _ in points)
    if var_n == 0:
        return mean_s, 0.0
    slope = sum((n - mean_n) * (s - mean_s) for n, s in points) / var_n
    base = mean_s - slope * mean_n
    if slope < 0:  # noise: step time cannot fall with more rows
        return mean_s, 0.0
    if base < 0:
        return 0.0, sum(n * s for n, s in points) / sum(n * n for n, _ in points)
    return base, slope
