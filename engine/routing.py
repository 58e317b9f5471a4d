"""Request routers for N engine replicas: pure decisions over each replica's outstanding count.

A router sees what a load balancer in front of replicas sees: how many requests it has sent to
each replica that have not finished yet, and (prefix_affinity) the prompt. No clock, no I/O: the
simulator (virtual clock) and the real replica set (wall clock, processes) call the same code,
so routing is tested exactly.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from common.vocab import ROUTERS
from engine.config import ConfigError
from engine.prefix_cache import BLOCK_TOKENS, block_hashes

# prefix_affinity: prompts are matched in the blocks the engines' prefix caches keep.
AFFINITY_BLOCK_TOKENS = BLOCK_TOKENS
# ... a match must cover at least this share of the prompt to count (SGLang's cache-aware
# router uses 0.5): a shared system prompt alone must not pull every new session to one replica.
MIN_MATCH_SHARE = 0.5
# ... and the matched replica may have at most this many more outstanding requests than the
# least loaded one, else the request goes there (a hot prefix must not starve the others).
MAX_IMBALANCE = 8
# ... block hashes remembered (least recently routed forgotten first).
MAX_AFFINITY_BLOCKS = 1 << 16


class Router(Protocol):
    """Picks the replica for the next request."""

    def pick(self, outstanding: Sequence[int], prompt_ids: Sequence[int] | None = None) -> int:
        """Index of the replica to send to, given each replica's outstanding requests (and the
        request's prompt, which only prefix-aware routers read)."""
        ...


class RoundRobin:
    """Replicas in turn, blind to load (Kubernetes Service / plain DNS round robin)."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, outstanding: Sequence[int], prompt_ids: Sequence[int] | None = None) -> int:
        index = self._next % len(outstanding)
        self._next = index + 1
        return index


class LeastOutstanding:
    """The replica with the fewest outstanding requests; ties go to the lowest index."""

    def pick(self, outstanding: Sequence[int], prompt_ids: Sequence[int] | None = None) -> int:
        return least_outstanding(outstanding)


class PowerOfTwo:
    """Two distinct replicas drawn at random (seeded), the less loaded wins; ties go to the first.

    Mitzenmacher's power of two choices: nearly least-outstanding balance while reading only two
    replicas' load, which is what makes it scale to many routers (Ray Serve's default router).
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def pick(self, outstanding: Sequence[int], prompt_ids: Sequence[int] | None = None) -> int:
        if len(outstanding) == 1:
            return 0
        first, second = self._rng.sample(range(len(outstanding)), 2)
        return second if outstanding[second] < outstanding[first] else first


class PrefixAffinity:
    """The replica that last served the longest prefix of this prompt (its KV cache likely
    still holds it), else the least outstanding. A session's next turn re-sends its history, so
    it follows its earlier turns; requests sharing a long document follow each other too.

    The prompt is matched in blocks of AFFINITY_BLOCK_TOKENS, each keyed by a hash of its tokens
    and everything before it, as the engine's prefix cache keys them (engine/prefix_cache.py). A
    match counts only if it covers MIN_MATCH_SHARE of the prompt and its replica is at most
    MAX_IMBALANCE requests busier than the least loaded one. Without a prompt it is least outstanding.
    """

    def __init__(self, block_tokens: int = AFFINITY_BLOCK_TOKENS,
                 max_blocks: int = MAX_AFFINITY_BLOCKS) -> None:
        self.block_tokens, self.max_blocks = block_tokens, max_blocks
        self._owner: OrderedDict[int, int] = OrderedDict()  # block hash -> replica

    def pick(self, outstanding: Sequence[int], prompt_ids: Sequence[int] | None = None) -> int:
        fallback = least_outstanding(outstanding)
        if not prompt_ids:
            return fallback
        hashes = block_hashes(prompt_ids, self.block_tokens)
        index = self._matched(hashes, len(prompt_ids))
        if index is None or index >= len(outstanding) or \
                outstanding[index] - outstanding[fallback] > MAX_IMBALANCE:
            index = fallback
        self._remember(hashes, index)
        return index

    def _matched(self, hashes: list[int], num_tokens: int) -> int | None:
        """The replica of the longest remembered prefix covering enough of the prompt."""
        for depth in range(len(hashes), 0, -1):
            if depth * self.block_tokens < MIN_MATCH_SHARE * num_tokens:
                return None
            owner = self._owner.get(hashes[depth - 1])
            if owner is not None:
                return owner
        return None

    def _remember(self, hashes: list[int], index: int) -> None:
        for h in hashes:
            self._owner[h] = index
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_blocks:
            self._owner.popitem(last=False)


def least_outstanding(outstanding: Sequence[int]) -> int:
    """The replica with the fewest outstanding requests; ties go to the lowest index."""
    return min(range(len(outstanding)), key=lambda i: (outstanding[i], i))


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
    if name == "prefix_affinity":
        return PrefixAffinity()
    return RoundRobin()
