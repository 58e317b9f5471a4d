"""Queueing truth for the mock server (mock/server.py): pure formulas, times in seconds.

A request in service takes S = T + (n - 1) I; at most K are in service, FIFO beyond.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class ClosedLoopTruth:
    """Steady state of C closed-loop users (no think time) against capacity K."""

    requests_per_s: float
    e2e_s: float  # mean
    ttft_s: float  # mean: queue wait + T
    itl_s: float


def service_s(ttft_s: float, itl_s: float, num_tokens: int) -> float:
    """S = T + (n - 1) I."""
    return ttft_s + (num_tokens - 1) * itl_s


def closed_loop(users: int, capacity: int | None, ttft_s: float, itl_s: float,
                num_tokens: int) -> ClosedLoopTruth:
    """C <= K: every user in service, C / S req/s, E2E = S; C > K: K / S req/s, E2E = C S / K."""
    s = service_s(ttft_s, itl_s, num_tokens)
    busy = users if capacity is None else min(users, capacity)
    rps = busy / s if s > 0 else float("inf")
    e2e = users / rps if s > 0 else 0.0  # Little's law: C = X E2E
    return ClosedLoopTruth(rps, e2e, e2e - s + ttft_s, itl_s)


def md1_mean_e2e_s(rate: float, service: float) -> float:
    """M/D/1 (Poisson arrivals, one server, deterministic S): S + rho S / (2 (1 - rho))."""
    rho = rate * service
    if not 0 <= rho < 1:
        raise ValueError(f"M/D/1 needs utilisation rho = rate x S < 1, got {rho:.3f}")
    return service + rho * service / (2 * (1 - rho))


def fifo_e2e_s(arrivals_s: list[float], service: float, capacity: int | None) -> list[float]:
    """Each request's exact E2E for these arrivals: K servers, FIFO, deterministic service S."""
    if capacity is None:
        return [service] * len(arrivals_s)
    free_at = [float("-inf")] * capacity  # a min-heap of when each server frees up
    out = []
    for arrival in arrivals_s:  # arrivals in order, so FIFO = the earliest-free server
        start = max(arrival, heapq.heappop(free_at))
        heapq.heappush(free_at, start + service)
        out.append(start + service - arrival)
    return out
