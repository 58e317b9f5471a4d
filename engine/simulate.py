"""The virtual clock: the real scheduler and step loop driven by a cost model in simulated time,
for one engine or N replicas behind a router.

Deterministic and instant, so tests can check exact dispatch, first-token and done times
against hand-computed values, and a simulator can predict a frontier before measuring.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config import SchedulerConfig
from engine.core import EngineCore, StepRecord
from engine.routing import check_replicas, make_router
from engine.scheduler import PrefillChunk, Scheduler
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
    # The engine's time between steps that follow each other at once (committing and streaming
    # tokens, scheduling): the next step starts this long after the last one ended.
    step_overhead_s: float = 0.0

    def prefill_s(self, num_seqs: int, num_tokens: int) -> float:
        return self.prefill_base_s + self.prefill_per_token_s * num_tokens

    def decode_s(self, num_seqs: int) -> float:
        return self.decode_base_s + self.decode_per_seq_s * num_seqs

    def mixed_s(self, num_decode_seqs: int, num_chunks: int, num_prefill_tokens: int) -> float:
        """A chunked step: its decode part plus its prefill part (the runner runs them in turn)."""
        decode_s = self.decode_s(num_decode_seqs) if num_decode_seqs else 0.0
        prefill_s = self.prefill_s(num_chunks, num_prefill_tokens) if num_chunks else 0.0
        return decode_s + prefill_s


@dataclass
class CostModelExecutor:
    """Executor that 'runs' a step by advancing the virtual clock; emits token 0 (never EOS).

    With prefix caching a step's prefill costs its uncached tail only (the chunks' tokens): the
    scheduler's own cache decides the hits, on the prompts' token ids, as in the real engine."""

    can_cache_prefixes = True

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

    def save_blocks(self, seq: Sequence, first: int, num_blocks: int, block_tokens: int) -> list[object]:
        return [None] * num_blocks  # the cache's keys are all a simulation needs

    def mixed(self, decode: list[Sequence], chunks: list[PrefillChunk]) -> list[int]:
        num_tokens = sum(c.num_tokens for c in chunks)
        self.clock.advance_to(self.clock.now() + self.cost.mixed_s(len(decode), len(chunks), num_tokens))
        return [self.token_id] * (len(decode) + sum(c.is_last for c in chunks))


def placeholder(seq_id: int, num_tokens: int) -> list[int]:
    """A prompt of `num_tokens` no other request shares (its first id, negative, is unique), so a
    prefix cache finds no reuse where none is known."""
    return ([-1 - seq_id] + [1] * (num_tokens - 1))[:num_tokens]


# At equal times, finishes land before arrivals, and both before any replica steps: a
# request finishing at t frees its slot (and its router count) for work arriving at t.
_FINISH, _ARRIVAL = 0, 1


@dataclass(order=True)
class _Event:
    at_s: float
    rank: int
    order: int
    action: Callable[[], None] = field(compare=False)


class _Replica:
    """One simulated engine: its own core and clock (its time is when it is next free)."""

    def __init__(self, sched_config: SchedulerConfig, cost: CostModel, kv_budget_tokens: int,
                 on_finish: Callable[[Sequence], None]) -> None:
        self.clock = VirtualClock()
        self.overhead_s = cost.step_overhead_s
        self.free_at_s = 0.0  # the previous step's end plus the overhead before the next
        self.core = EngineCore(Scheduler(sched_config, kv_budget_tokens),
                               CostModelExecutor(self.clock, cost), self.clock, on_finish=on_finish)
        self.next_step_s = float("inf")  # when it next plans; inf = idle until work arrives
        self.num_outstanding = 0  # routed here and not finished, as the router sees it

    def add(self, seq: Sequence, now_s: float) -> None:
        self.clock.advance_to(now_s)
        self.next_step_s = min(self.next_step_s, max(self.clock.now(), self.free_at_s))
        self.core.add(seq)

    def step(self) -> None:
        self.clock.advance_to(self.next_step_s)
        plan = self.core.step()
        if plan.is_idle:
            self.next_step_s = plan.wake_at_s or float("inf")
        else:
            self.free_at_s = self.next_step_s = self.clock.now() + self.overhead_s


class Simulator:
    """Runs N engine cores behind a router on a virtual clock; requests arrive at given times.

    Each replica is its own core with its own clock; a discrete-event loop advances whichever
    is due first (an arrival, a finish, or a replica's next step), so the router decides on
    outstanding counts as they are at each arrival, never on finishes still in the future.
    """

    def __init__(self, sched_config: SchedulerConfig, cost: CostModel,
                 kv_budget_tokens: int = 1 << 30, replicas: int = 1, router: str | None = None,
                 seed: int = 0) -> None:
        check_replicas(replicas, router)
        self.replicas = [_Replica(sched_config, cost, kv_budget_tokens, self._on_finish)
                         for _ in range(replicas)]
        self.router = make_router(router, seed)
        self.seqs: list[Sequence] = []
        self.routed_to: list[int] = []  # replica index per sequence (seq_id order)
        self._events: list[_Event] = []
        self._order = itertools.count()
        self._finish_hooks: dict[int, Callable[[Sequence], None]] = {}

    @property
    def core(self) -> EngineCore:
        """The first replica's core (the only one when replicas == 1)."""
        return self.replicas[0].core

    @property
    def clock(self) -> VirtualClock:
        return self.replicas[0].clock

    @property
    def steps(self) -> list[StepRecord]:
        """Every replica's steps, by start time."""
        return sorted((s for r in self.replicas for s in r.core.steps), key=lambda s: s.start_s)

    def submit_at(self, at_s: float, num_prompt_tokens: int, max_new_tokens: int,
                  on_finish: Callable[[Sequence], None] | None = None,
                  prompt_ids: list[int] | None = None) -> None:
        """Schedule a request to arrive (scheduled = sent = at_s); the router places it then.
        `prompt_ids` (else a placeholder of `num_prompt_tokens`) are what a prefix cache and a
        prefix router match."""
        def arrive() -> None:
            seq_id = len(self.seqs)
            prompt = placeholder(seq_id, num_prompt_tokens) if prompt_ids is None else list(prompt_ids)
            seq = Sequence(seq_id, prompt,
                           SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
                           at_s, at_s)
            self.seqs.append(seq)
            if on_finish is not None:
                self._finish_hooks[seq.seq_id] = on_finish
            # A placeholder prompt ([1] * n) would read as one prefix shared by every request:
            # a prefix router routes it by load instead (least outstanding).
            index = self.router.pick([r.num_outstanding for r in self.replicas], prompt_ids)
            self.routed_to.append(index)
            self.replicas[index].num_outstanding += 1
            self.replicas[index].add(seq, at_s)
        self._push(at_s, _ARRIVAL, arrive)

    def run(self, until_s: float = float("inf")) -> list[Sequence]:
        """Simulate until no work and no arrivals remain (or `until_s`); return all sequences."""
        while True:
            event_s = self._events[0].at_s if self._events else float("inf")
            replica = min(self.replicas, key=lambda r: r.next_step_s)
            now_s = min(event_s, replica.next_step_s)
            if now_s == float("inf") or now_s >= until_s:
                return self.seqs
            if event_s <= replica.next_step_s:
                heapq.heappop(self._events).action()
            else:
                replica.step()

    def _push(self, at_s: float, rank: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, _Event(at_s, rank, next(self._order), action))

    def _on_finish(self, seq: Sequence) -> None:
        # Stamped at the step's end, which may lie ahead of other replicas: deliver it then.
        def finish() -> None:
            self.replicas[self.routed_to[seq.seq_id]].num_outstanding -= 1
            hook = self._finish_hooks.pop(seq.seq_id, None)
            if hook is not None:
                hook(seq)
        self._push(seq.done_s if seq.done_s is not None else 0.0, _FINISH, finish)
