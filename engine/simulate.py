"""The virtual clock: the real scheduler and step loop driven by a cost model in simulated time.

Deterministic and instant, so tests can check exact dispatch, first-token and done times
against hand-computed values, and a simulator can predict a frontier before measuring.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.core import EngineCore
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence


class VirtualClock:
    """Simulated seconds; only the simulator advances it."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.t = start_s

    def now(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        self.t = max(self.t, t)


@dataclass(frozen=True)
class CostModel:
    """Step time as a linear function of batch shape, in seconds."""

    prefill_base_s: float = 0.0
    prefill_per_token_s: float = 0.0
    decode_base_s: float = 0.0
    decode_per_seq_s: float = 0.0

    def prefill_s(self, num_seqs: int, num_tokens: int) -> float:
        return self.prefill_base_s + self.prefill_per_token_s * num_tokens

    def decode_s(self, num_seqs: int) -> float:
        return self.decode_base_s + self.decode_per_seq_s * num_seqs


@dataclass
class CostModelExecutor:
    """Executor that 'runs' a step by advancing the virtual clock; emits token 0 (never EOS)."""

    clock: VirtualClock
    cost: CostModel
    token_id: int = 0

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        num_tokens = sum(s.num_prompt_tokens for s in seqs)
        self.clock.advance_to(self.clock.now() + self.cost.prefill_s(len(seqs), num_tokens))
        return [self.token_id] * len(seqs)

    def decode(self, seqs: list[Sequence]) -> list[int]:
        self.clock.advance_to(self.clock.now() + self.cost.decode_s(len(seqs)))
        return [self.token_id] * len(seqs)

    def release(self, seqs: list[Sequence]) -> None:
        pass


@dataclass(order=True)
class _Event:
    at_s: float
    order: int
    action: Callable[[], None] = field(compare=False)


class Simulator:
    """Runs the engine core on a virtual clock; requests arrive at given simulated times."""

    def __init__(self, sched_config: SchedulerConfig, cost: CostModel,
                 kv_budget_tokens: int = 1 << 30) -> None:
        self.clock = VirtualClock()
        self.core = EngineCore(Scheduler(sched_config, kv_budget_tokens),
                               CostModelExecutor(self.clock, cost), self.clock,
                               on_finish=self._on_finish)
        self.seqs: list[Sequence] = []
        self._events: list[_Event] = []
        self._order = itertools.count()
        self._finish_hooks: dict[int, Callable[[Sequence], None]] = {}

    def submit_at(self, at_s: float, num_prompt_tokens: int, max_new_tokens: int,
                  on_finish: Callable[[Sequence], None] | None = None) -> None:
        """Schedule a request to arrive (scheduled = sent = at_s)."""
        def arrive() -> None:
            seq = Sequence(len(self.seqs), [1] * num_prompt_tokens,
                           SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
                           at_s, at_s)
            self.seqs.append(seq)
            if on_finish is not None:
                self._finish_hooks[seq.seq_id] = on_finish
            self.core.add(seq)
        heapq.heappush(self._events, _Event(at_s, next(self._order), arrive))

    def run(self, until_s: float = float("inf")) -> list[Sequence]:
        """Simulate until no work and no arrivals remain (or `until_s`); return all sequences."""
        while self.clock.now() < until_s:
            self._deliver_due()
            plan = self.core.step()
            if not plan.is_idle:
                continue
            next_s = min(self._next_arrival_s(), plan.wake_at_s or float("inf"))
            if next_s == float("inf"):
                break
            self.clock.advance_to(next_s)
        return self.seqs

    def _deliver_due(self) -> None:
        while self._events and self._events[0].at_s <= self.clock.now():
            heapq.heappop(self._events).action()

    def _next_arrival_s(self) -> float:
        return self._events[0].at_s if self._events else float("inf")

    def _on_finish(self, seq: Sequence) -> None:
        hook = self._finish_hooks.pop(seq.seq_id, None)
        if hook is not None:
            hook(seq)
