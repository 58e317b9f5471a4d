"""Request routers for N engine replicas: pure decisions over each replica's outstanding count.

A router sees what a load balancer in front of replicas sees: how many requests it has sent to
each replica that have not finished yet. No clock, no I/O: the simulator (virtual clock) and the
real replica set (wall clock, processes) call the same code, so routing is tested exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from engine.config import ConfigError

ROUTERS: tuple[str, ...] = ("round_robin", "least_outstanding", "power_of_two")
# When N > 1 replicas are asked for without a router: what vLLM's router and most LLM load
# balancers do by default, and the one that keeps long requests from queueing short ones.
DEFAULT_ROUTER = "least_outstanding"


class Router(Protocol):
    """Picks the replica for the next request."""

    def pick(self, outstanding: Sequence[int]) -> int:
        """Index of the replica to send to, given each replica's outstanding requests."""
        ...


class RoundRobin:
    """Replicas in turn, blind to load (Kubernetes Service / plain DNS round robin)."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, outstanding: Sequence[int]) -> int:
        index = self._next % len(outstanding)
        self._next = index + 1
        return index


class LeastOutstanding:
    """The replica with the fewest outstanding requests; ties go to the lowest index."""

    def pick(self, outstanding: Sequence[int]) -> int:
        return min(range(len(outstanding)), key=lambda i: (outstanding[i], i))


class PowerOfTwo:
    """Two distinct replicas drawn at random (seeded), the less loaded wins; ties go to the first.

    Mitzenmacher's power of two choices: nearly least-outstanding balance while reading only two
    replicas' load, which is what makes it scale to many routers (Ray Serve's default router).
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def pick(self, outstanding: Sequence[int]) -> int:
        if len(outstanding) == 1:
            return 0
        first, second = self._rng.sample(range(len(outstanding)), 2)
        return second if outstanding[second] < outstanding[first] else first


def check_replicas(num_replicas: int, router: str | None) -> None:
    """Refuse N < 1 or an unknown router name (ConfigError naming the fix)."""
    if int(num_replicas) != num_replicas or num_replicas < 1:
        raise ConfigError(f"replicas must be an integer >= 1, got {num_replicas}")
    if router is not None and router not in ROUTERS:
        raise ConfigError(f"unknown router {router!r}; use one of: {', '.join(ROUTERS)}")


def make_router(name: str | None, seed: int = 0) -> Router:
    """A fresh router by name; None (one replica, nothing to route) means round robin."""
    check_replicas(1, name)
    if name == "least_outstanding":
        return LeastOutstanding()
    if name == "power_of_two":
        return PowerOfTwo(seed)
    return RoundRobin()
