"""Does a trial's load generator keep up? Its own lag, measured every run, and the verdict.

A client that sends late, or whose event loop is too busy to stamp chunks when they arrive,
reports its own delay as the server's. Rule (docs/metrics.md, "Client-bound trials"): a trial is
`client_bound` when the p99 send lag (sent - scheduled, every request of the run) or the p99
event-loop lag of the client workers exceeds max(1 ms, 2% of the trial's p50 TTFT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from experiments.records import RequestRecord

MIN_LIMIT_MS = 1.0
TTFT_FRACTION = 0.02
MS = 1000.0


@dataclass(frozen=True)
class ClientStats:
    """The load generator's health over one run."""

    loop_lag_s: list[float] = field(default_factory=list)  # event-loop lag samples (HTTP workers)
    cpu_s: float | None = None  # client CPU over the run, all workers together
    wall_s: float | None = None
    num_workers: int = 0  # 0: the in-process sender thread
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ClientVerdict:
    """The check's outcome: lag percentiles (ms), whether the trial is client-bound and why."""

    is_client_bound: bool
    reason: str | None
    send_lag_ms: tuple[float, float, float] | None  # p50, p99, max of sent - scheduled
    details: dict


def lag_summary_ms(values_s: list[float]) -> tuple[float, float, float] | None:
    """(p50, p99, max) in ms; None without samples."""
    if not values_s:
        return None
    arr = np.maximum(np.asarray(values_s, dtype=float), 0.0) * MS
    p50, p99 = np.percentile(arr, [50, 99])
    return float(p50), float(p99), float(arr.max())


def lag_limit_ms(ttft_p50_ms: float | None) -> float:
    """The threshold: max(1 ms, 2% of p50 TTFT)."""
    return max(MIN_LIMIT_MS, TTFT_FRACTION * (ttft_p50_ms or 0.0))


def check_client(everyone: list[RequestRecord], stats: ClientStats | None,
                 ttft_p50_ms: float | None) -> ClientVerdict:
    """Apply the rule to every request of a run (measured and background) and the client stats."""
    stats = stats or ClientStats()
    send = lag_summary_ms([r.sent_s - r.scheduled_s for r in everyone])
    loop = lag_summary_ms(stats.loop_lag_s)
    limit = lag_limit_ms(ttft_p50_ms)
    why = [f"p99 {name} lag {lag[1]:.2f} ms > {limit:.2f} ms" for name, lag in
           (("send", send), ("event-loop", loop)) if lag is not None and lag[1] > limit]
    cpu_share = (stats.cpu_s / (stats.wall_s * max(1, stats.num_workers))
                 if stats.cpu_s is not None and stats.wall_s else None)
    reason = None
    if why:
        reason = "; ".join(why) + f" (limit max({MIN_LIMIT_MS:g} ms, {TTFT_FRACTION:.0%} of p50 TTFT))"
        if cpu_share is not None:
            reason += f"; client CPU {cpu_share:.0%} of {max(1, stats.num_workers)} worker(s)"
    details = {"send_lag_ms": _named(send), "loop_lag_ms": _named(loop), "limit_ms": limit,
               "cpu_s": stats.cpu_s, "wall_s": stats.wall_s, "cpu_share": cpu_share,
               "num_workers": stats.num_workers, **stats.info}
    return ClientVerdict(bool(why), reason, send, details)


def _named(lag: tuple[float, float, float] | None) -> dict | None:
    return None if lag is None else dict(zip(("p50", "p99", "max"), lag, strict=True))
