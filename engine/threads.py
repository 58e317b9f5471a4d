"""The engine's intra-op threads on CPU: chosen from the cores this process may use, not inherited.

Measured on the 2-core machine of docs/benchmarks.md (builtin:small, lean path): one thread
decodes batch 1 faster than two (its matmuls are memory-bound: a second thread adds no
bandwidth, only a wake-up per op), two decode batch 16 ~1.3x faster when nothing else runs,
and two are several times slower as soon as another process (a load generator, an HTTP
front end, a neighbour) takes a core: every op waits for the descheduled thread. So the engine
leaves one core to the client and the HTTP work, as vLLM's CPU build does with its one thread.
"""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS: no affinity API
        return max(1, os.cpu_count() or 1)


def engine_num_threads(num_cores: int | None = None, is_sharing_cores: bool = True) -> int:
    """Threads for the engine: all cores but one when a client or HTTP front end shares them."""
    num_cores = available_cores() if num_cores is None else num_cores
    return max(1, num_cores - 1) if is_sharing_cores else num_cores


def set_engine_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (None: `engine_num_threads()`); returns the number set."""
    num_threads = engine_num_threads() if num_threads is None else num_threads
    if num_threads < 1:
        raise ValueError(f"threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    return num_threads
