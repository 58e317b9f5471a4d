"""Trial metrics: pure functions over request timelines and step logs (no clocks, no engine).

Definitions (docs/metrics.md has the full text): latencies in ms from the *scheduled* time;
percentiles by numpy's linear interpolation; throughput over the window
[first measured scheduled, last measured done], counting every completion and token in it;
goodput = requests/s x the share of measured completions meeting every SLO.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from common.details import Attainment, TrialDetails
from common.records import PERCENTILES, SLO, Dist, RequestRecord, TrialMetrics
from engine.core import StepRecord

MS = 1000.0
# Saturation rule thresholds (docs/metrics.md, "Saturation").
SATURATION_RATE_RATIO = 0.9
SATURATION_MIN_DEPTH = 4


def summarize(values_ms: Iterable[float]) -> Dist | None:
    """p50/p90/p95/p99 (numpy linear interpolation) and mean; None without samples."""
    arr = np.asarray(list(values_ms), dtype=float)
    if arr.size == 0:
        return None
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, PERCENTILES, method="linear"))
    return Dist(p50, p90, p95, p99, float(arr.mean()), int(arr.size))


# -- per-request latencies (ms); None when the request has no such sample ----------------------


def ttft_ms(r: RequestRecord) -> float | None:
    """First token - scheduled."""
    return None if not r.token_times_s else (r.token_times_s[0] - r.scheduled_s) * MS


def e2e_ms(r: RequestRecord) -> float | None:
    """Done - scheduled."""
    return None if r.done_s is None else (r.done_s - r.scheduled_s) * MS


def service_ms(r: RequestRecord) -> float | None:
    """Done - sent: the server's share, without any client-side sending delay."""
    return None if r.done_s is None else (r.done_s - r.sent_s) * MS


def tpot_ms(r: RequestRecord) -> float | None:
    """(done - first token) / (output tokens - 1), for more than one output token."""
    if r.num_output_tokens < 2 or r.done_s is None or not r.token_times_s:
        return None
    return (r.done_s - r.token_times_s[0]) / (r.num_output_tokens - 1) * MS


def queue_wait_ms(r: RequestRecord) -> float | None:
    """Admitted - sent; None when the server did not say (external servers)."""
    return None if r.admitted_s is None else (r.admitted_s - r.sent_s) * MS


def itl_ms(r: RequestRecord) -> list[float]:
    """Gaps between consecutive tokens of one request."""
    return (np.diff(np.asarray(r.token_times_s, dtype=float)) * MS).tolist()


PER_REQUEST: dict[str, Callable[[RequestRecord], float | None]] = {
    "ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "e2e_ms": e2e_ms,
    "queue_wait_ms": queue_wait_ms, "service_ms": service_ms,
}


def latency_samples(records: list[RequestRecord]) -> dict[str, list[float]]:
    """Every latency metric's samples over the successful records (ITL pooled over requests)."""
    ok = [r for r in records if r.is_ok]
    samples = {name: [v for v in map(fn, ok) if v is not None] for name, fn in PER_REQUEST.items()}
    samples["itl_ms"] = [gap for r in ok for gap in itl_ms(r)]
    return samples


# -- window, throughput, goodput ----------------------------------------------------------------


def window(records: list[RequestRecord]) -> tuple[float, float] | None:
    """[first scheduled, last done] over the measured records that ended; None if none did."""
    ended = [(r.scheduled_s, r.done_s) for r in records if r.done_s is not None]
    if not ended:
        return None
    return min(s for s, _ in ended), max(d for _, d in ended)


def meets_slos(r: RequestRecord, slos: list[SLO]) -> bool:
    """Per-request check (vLLM --goodput): each SLO'd metric <= its max_ms; failures never do."""
    if not r.is_ok:
        return False
    for slo in slos:
        value = PER_REQUEST[slo.metric](r)
        if value is None and slo.metric == "tpot_ms":
            continue  # a 1-token output has no TPOT: nothing to violate
        if value is None or value > slo.max_ms:
            return False
    return True


def mean_batch_size(steps: list[StepRecord], start_s: float, end_s: float) -> float | None:
    """Decode-step batch size averaged over time inside [start_s, end_s]; 0 without decodes;
    None without any step (an HTTP target, whose batches are not visible from the client)."""
    if not steps:
        return None
    decodes = [s for s in steps if s.phase in ("decode", "mixed")]  # mixed: its decoded rows
    weights = [_overlap(s, start_s, end_s) for s in decodes]
    if sum(weights) > 0:
        return float(np.average([s.num_seqs for s in decodes], weights=weights))
    inside = [s.num_seqs for s in decodes if start_s <= s.start_s <= end_s]
    return float(np.mean(inside)) if inside else 0.0  # zero-duration steps (a free cost model)


def _overlap(step: StepRecord, start_s: float, end_s: float) -> float:
    return max(0.0, min(step.start_s + step.duration_s, end_s) - max(step.start_s, start_s))


def compute_trial_metrics(records: list[RequestRecord], steps: list[StepRecord], slos: list[SLO],
                          peak_memory_mb: float | None, saturated: bool,
                          background: list[RequestRecord] | None = None) -> TrialMetrics:
    """All of a trial's metrics. Latencies come from the measured `records`; throughput counts
    every completion and token inside the window, `background` (warm-up, cooldown) included,
    since those requests share the batch there: the steady-state rate, unbiased at the edges."""
    ok = [r for r in records if r.is_ok]
    start_s, end_s = window(records) or (0.0, 0.0)
    duration_s = end_s - start_s
    everyone = records + list(background or [])
    rps = _per_s(sum(r.is_ok and start_s <= r.done_s <= end_s for r in everyone), duration_s)
    out_tok = sum(_tokens_in(r, start_s, end_s) for r in everyone)
    prompt_tok = sum(r.num_prompt_tokens for r in everyone
                     if r.token_times_s and start_s <= r.token_times_s[0] <= end_s)
    good = [meets_slos(r, slos) for r in sorted(records, key=lambda r: r.scheduled_s)]
    num_good = sum(good)
    attainment = num_good / len(records) if records else 0.0
    dists = {name: summarize(values) for name, values in latency_samples(records).items()}
    return TrialMetrics(
        requests_completed=len(ok),
        requests_failed=len(records) - len(ok),
        duration_s=duration_s,
        requests_per_s=rps,
        output_tokens_per_s=_per_s(out_tok, duration_s),
        total_tokens_per_s=_per_s(out_tok + prompt_tok, duration_s),
        **dists,
        goodput_rps=rps * num_good / len(ok) if ok else 0.0,  # the good share of completions
        slo_attainment=attainment,
        mean_batch_size=mean_batch_size(steps, start_s, end_s),
        peak_memory_mb=peak_memory_mb,
        saturated=saturated,
        slos={s.metric: {"percentile": s.percentile, "max_ms": s.max_ms} for s in slos},
        prefix_cache_hit_rate=prefix_cache_hit_rate(records),
        details=TrialDetails(attainment=Attainment.from_dict(attainment_evidence(good))),
    )


# Batch means (docs/metrics.md, "Correlated requests"): at least this many requests per batch
# and between 2 and this many batches; fewer requests than two batches: no estimate.
MIN_BATCH_REQUESTS, MAX_BATCHES = 8, 10


def design_effect(good: list[bool]) -> float:
    """How much the requests of one trial, in arrival order, are worth less than independent
    ones: the variance of batch means of the pass/fail series over its binomial value (the
    batch-means method of simulation output analysis). Requests that share a queue pass and miss
    in runs (one burst or hiccup fails a stretch of them), so the trial carries the evidence of
    n / effect independent requests. 1 when it cannot be estimated or shows no clustering; at
    most the batch size (every batch all-pass or all-miss)."""
    n = len(good)
    k = min(MAX_BATCHES, n // MIN_BATCH_REQUESTS)
    p = sum(good) / n if n else 0.0
    if k < 2 or p in (0.0, 1.0):
        return 1.0
    m = n // k
    means = [sum(good[i * m:(i + 1) * m]) / m for i in range(k)]
    effect = float(np.var(means, ddof=1)) * m / (p * (1 - p))
    return min(max(effect, 1.0), float(m))


def attainment_evidence(good: list[bool]) -> dict[str, float]:
    """What a trial's attainment is worth as evidence (requests in arrival order)."""
    effect = design_effect(good)
    return {"design_effect": round(effect, 4), "effective_n": round(len(good) / effect, 2)}


def _tokens_in(r: RequestRecord, start_s: float, end_s: float) -> int:
    """Output tokens of `r` stamped inside [start_s, end_s]."""
    return sum(start_s <= t <= end_s for t in r.token_times_s)


def _per_s(count: float, duration_s: float) -> float:
    return count / duration_s if duration_s > 0 else 0.0


# -- prefix caching and sessions ---------------------------------------------------------------


def prefix_cache_hit_rate(records: list[RequestRecord]) -> float | None:
    """Cached / all prompt tokens over the successful measured requests whose target reported
    its cached tokens; None when none did (unknown is not 0) or they had no prompt tokens."""
    known = [r for r in records if r.is_ok and r.num_cached_tokens is not None]
    num_prompt = sum(r.num_prompt_tokens for r in known)
    if num_prompt == 0:
        return None
    return sum(r.num_cached_tokens or 0 for r in known) / num_prompt


def prefix_cache_details(records: list[RequestRecord]) -> dict:
    """The hit rate's inputs over the successful measured requests, and why it is unknown."""
    ok = [r for r in records if r.is_ok]
    known = [r for r in ok if r.num_cached_tokens is not None]
    reason = None if known else ("the target reported no cached prompt tokens (an engine "
                                 "without prefix caching, or a server that does not say)")
    return {"num_cached_tokens": sum(r.num_cached_tokens or 0 for r in known),
            "num_prompt_tokens": sum(r.num_prompt_tokens for r in known),
            "num_reporting": len(known), "num_requests": len(ok), "reason": reason}


def ttft_by_turn(records: list[RequestRecord]) -> dict[str, dict[str, float | int]]:
    """TTFT p50/p90 (ms, linear interpolation) and sample count per turn number ("1", "2", ...),
    over the successful measured requests of session workloads; {} without sessions."""
    by_turn: dict[int, list[float]] = {}
    for r in records:
        value = ttft_ms(r) if r.is_ok and r.turn is not None else None
        if value is not None:
            by_turn.setdefault(r.turn, []).append(value)  # type: ignore[arg-type]
    out = {}
    for turn in sorted(by_turn):
        dist = summarize(by_turn[turn])
        assert dist is not None
        out[str(turn)] = {"p50": dist.p50, "p90": dist.p90, "count": dist.count}
    return out


# -- sanity checks ------------------------------------------------------------------------------


def littles_law_concurrency(metrics: TrialMetrics) -> float | None:
    """requests/s x mean E2E (s): ~= C for a closed loop with C users and no think time."""
    if metrics.e2e_ms is None:
        return None
    return metrics.requests_per_s * metrics.e2e_ms.mean / MS


def queue_slope(depth_samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of queue depth over time (requests/s); 0 if the times don't vary."""
    t = np.asarray([s[0] for s in depth_samples], dtype=float)
    d = np.asarray([s[1] for s in depth_samples], dtype=float)
    var_t = float(((t - t.mean()) ** 2).sum()) if t.size else 0.0
    return float(((t - t.mean()) * (d - d.mean())).sum() / var_t) if var_t > 0 else 0.0


def depth_samples(at_s: list[float], everyone: list[RequestRecord],
                  by_admission: bool = False) -> list[tuple[float, int]]:
    """Requests waiting at each time in `at_s`, rebuilt from timelines: sent with no first token
    yet (over HTTP, the client's view), or, `by_admission`, sent and not yet admitted (the
    engine's own queue, as the in-process driver samples it; the simulator knows admissions)."""
    starts = np.sort([r.sent_s for r in everyone])

    def left(r: RequestRecord) -> float:
        if by_admission and r.admitted_s is not None:
            return r.admitted_s
        return r.token_times_s[0] if r.token_times_s else (r.done_s or np.inf)
    ends = np.sort([left(r) for r in everyone])
    t = np.asarray(at_s)
    waiting = np.searchsorted(starts, t, side="left") - np.searchsorted(ends, t, side="right")
    return [(float(a), int(max(0, d))) for a, d in zip(t, waiting, strict=True)]


def is_saturated(depth_samples: list[tuple[float, int]], offered_rate: float,
                 achieved_rate: float, batch_size: int) -> bool:
    """Open loop: completions fall behind arrivals *and* the queue grows (docs/metrics.md)."""
    if len(depth_samples) < 2 or offered_rate <= 0:
        return False
    is_behind = achieved_rate < SATURATION_RATE_RATIO * offered_rate
    final_depth = depth_samples[-1][1]
    is_growing = queue_slope(depth_samples) > 0
    return is_behind and is_growing and final_depth >= max(SATURATION_MIN_DEPTH, batch_size)
