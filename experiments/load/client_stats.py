"""Does a trial's load generator keep up? Its own lag, measured every run, and the verdict.

A client that sends late, or whose event loop is too busy to stamp chunks when they arrive,
reports its own delay as the server's. Rule (docs/metrics.md, "Client-bound trials"): with
L = max(1 ms, 2% of the trial's p50 TTFT), a trial is `client_bound` when the p90 send lag
(sent - scheduled, every request but the warm-up; for the local engine only the part that
delayed an admission, see `effective_send_lags_s`) or the median event-loop lag of the client
workers exceeds L, or the workers' loops stalled (wake-ups over STALL_MS late, added up) for
more than STALL_SHARE of the run. Not the p99: on a shared machine the OS now and then runs
any process tens of ms late (the server too); a client that cannot keep up is late on many
sends, or on most wake-ups of its loop, or stalls for a good part of the run. Latency counts
from the schedule, so a rare late send only makes that request's latency pessimistic, never
flattering.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace

import numpy as np

from common.details import ClientCheck
from common.records import ClientLag, RequestRecord, TrialMetrics

MIN_LIMIT_MS = 1.0
TTFT_FRACTION = 0.02
MS = 1000.0
# A wake-up this late is a stall: every chunk read then is stamped that late, and in a closed
# loop no user sends meanwhile. A loop stalled for more than STALL_SHARE of the run (all its
# stalls added up) measured its own pauses, not the server (docs/metrics.md, rule 3).
STALL_MS = 50.0
STALL_SHARE = 0.05


@dataclass(frozen=True)
class ClientStats:
    """The load generator's health over one run."""

    loop_lag_s: list[float] = field(default_factory=list)  # event-loop lag samples (HTTP workers)
    cpu_s: float | None = None  # client CPU over the run, all workers together
    wall_s: float | None = None
    num_workers: int = 0  # 0: the in-process sender thread
    info: dict = field(default_factory=dict)
    judge_send_lag: bool = True  # False: sends come from the engine thread (in-process closed loop)


@dataclass(frozen=True)
class ClientVerdict:
    """The check's outcome: lag percentiles (ms), whether the trial is client-bound and why."""

    is_client_bound: bool
    reason: str | None
    send_lag_ms: tuple[float, float, float] | None  # p50, p99, max of sent - scheduled
    details: ClientCheck


def lag_summary_ms(values_s: list[float]) -> tuple[float, float, float, float] | None:
    """(p50, p99, max, p90) in ms; None without samples."""
    if not values_s:
        return None
    arr = np.maximum(np.asarray(values_s, dtype=float), 0.0) * MS
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return float(p50), float(p99), float(arr.max()), float(p90)


def lag_limit_ms(ttft_p50_ms: float | None) -> float:
    """The threshold: max(1 ms, 2% of p50 TTFT)."""
    return max(MIN_LIMIT_MS, TTFT_FRACTION * (ttft_p50_ms or 0.0))


def effective_send_lags_s(everyone: list[RequestRecord],
                          step_spans: list[tuple[float, float]]) -> list[float]:
    """sent - scheduled, less what cost nothing: the engine admits only between steps, so a
    request due while a step runs and sent before that step ends is admitted as if on time;
    sent later, it is late by sent - that step's end. No step spans (an external server, an
    idle engine): the whole lag."""
    starts = [a for a, _ in step_spans]
    out = []
    for r in everyone:
        i = bisect.bisect_right(starts, r.scheduled_s) - 1
        if i >= 0 and r.scheduled_s < step_spans[i][1]:  # a step was running when it was due
            out.append(max(0.0, r.sent_s - step_spans[i][1]))
        else:
            out.append(r.sent_s - r.scheduled_s)
    return out


def check_client(everyone: list[RequestRecord], stats: ClientStats | None,
                 ttft_p50_ms: float | None,
                 step_spans: list[tuple[float, float]] | None = None) -> ClientVerdict:
    """Apply the rule to every request of a run (measured and background) and the client stats;
    `step_spans` (start, end) of the local engine's steps, sorted, when there are any."""
    stats = stats or ClientStats()
    send = lag_summary_ms(effective_send_lags_s(everyone, step_spans or []))
    loop = lag_summary_ms(stats.loop_lag_s)
    limit = lag_limit_ms(ttft_p50_ms)
    why = []
    if send is not None and send[3] > limit and stats.judge_send_lag:
        why.append(f"p90 send lag {send[3]:.2f} ms > {limit:.2f} ms")
    if loop is not None and loop[0] > limit:
        why.append(f"median event-loop lag {loop[0]:.2f} ms > {limit:.2f} ms")
    stalled = stalled_share(stats)
    if stalled is not None and stalled > STALL_SHARE:
        why.append(f"event loop stalled {stalled:.0%} of the run (wake-ups over {STALL_MS:g} ms "
                   f"late, added up) > {STALL_SHARE:.0%}")
    cpu_share = (stats.cpu_s / (stats.wall_s * max(1, stats.num_workers))
                 if stats.cpu_s is not None and stats.wall_s else None)
    reason = None
    if why:
        reason = "; ".join(why) + f" (limit max({MIN_LIMIT_MS:g} ms, {TTFT_FRACTION:.0%} of p50 TTFT))"
        if cpu_share is not None:
            reason += f"; client CPU {cpu_share:.0%} of {max(1, stats.num_workers)} worker(s)"
    details = ClientCheck(send_lag_ms=_named(send), loop_lag_ms=_named(loop), limit_ms=limit,
                          stalled_share=None if stalled is None else round(stalled, 4),
                          send_lag_judged=stats.judge_send_lag, cpu_s=stats.cpu_s,
                          wall_s=stats.wall_s, cpu_share=cpu_share, num_workers=stats.num_workers,
                          extra=dict(stats.info))  # the client's own facts, e.g. uvloop
    return ClientVerdict(bool(why), reason, send[:3] if send else None, details)


def stalled_share(stats: ClientStats) -> float | None:
    """The share of the run the client workers' loops spent stalled: the lag samples over
    STALL_MS added up, over the run's wall time per worker; None without samples."""
    if not stats.loop_lag_s or not stats.wall_s:
        return None
    stalled_s = sum(lag for lag in stats.loop_lag_s if lag * MS > STALL_MS)
    return stalled_s / (stats.wall_s * max(1, stats.num_workers))


def _named(lag: tuple[float, float, float, float] | None) -> dict | None:
    return None if lag is None else dict(zip(("p50", "p99", "max", "p90"), lag, strict=True))


def with_client_check(metrics: TrialMetrics, records: list[RequestRecord],
                      background: list[RequestRecord], stats: ClientStats | None,
                      num_warmup: int, steps: list | None = None) -> TrialMetrics:
    """`metrics` with the verdict: client_bound(+reason), client_lag_ms, details.client."""
    # Warm-up requests pay connection set-up and first-call costs by design: not judged.
    judged = records + [r for r in background if r.request_id >= num_warmup]
    ttft_p50 = metrics.ttft_ms.p50 if metrics.ttft_ms is not None else None
    spans = sorted((s.start_s, s.start_s + s.duration_s) for s in steps or [])
    verdict = check_client(judged, stats, ttft_p50, spans)
    lag = ClientLag(*verdict.send_lag_ms) if verdict.send_lag_ms is not None else None
    return replace(metrics, client_bound=verdict.is_client_bound,
                   client_bound_reason=verdict.reason, client_lag_ms=lag,
                   details=replace(metrics.details, client=verdict.details))
