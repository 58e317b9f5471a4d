"""The batching scheduler: a pure state machine (no torch, no clock reads).

It plans, the executor runs the plan, the core commits the tokens. `now` is always passed in,
so the same code runs under the wall clock (the real engine) and a virtual clock (tests, the
simulator) with identical batching semantics.

KV memory model: a batch occupies `rows x longest row` tokens, and is admitted only if, even
when every row reaches its `max_new_tokens`, `num_rows * max(max_num_tokens)` stays within the
budget. That is what both runners hold: the lean runner's slot cache (engine/slot_cache.py) is
`slots x capacity`, sized at each reallocation to the live rows and their longest
prompt + max_new_tokens; the Hugging Face runner's left-padded cache is `rows x longest row`.

Prefill token budget (`max_num_batched_tokens`, continuous only): a step decodes every prefilled
row and spends the rest of the budget on prompt chunks, oldest first (Sarathi-Serve), so a long
prompt stalls the running streams for at most one budget-sized step instead of its whole prefill.
A sequence in `running` is still prefilling until it has its first output token.

Prefix caching (`enable_prefix_caching`, engine/prefix_cache.py): when a sequence's prefill
starts, its prompt's leading cached blocks set `num_cached_tokens`, and its first chunk carries
their payloads and starts after them: only the uncached tail is prefilled and counts against the
token budget. Every prefill then runs as chunks (the two-phase policies' as one whole-tail chunk
per sequence). The core hands back the blocks each sequence computed (`cache_computed`: its
prompt once prefilled, prompt and output when it finishes). KV model with caching: a hit is
copied into the sequence's own slot, so it saves compute, not slot memory; the cached blocks are
counted on top of the slots (`rows x longest` + cached tokens <= the budget, and cached tokens
<= `prefix_cache_share` of it), and an admission evicts the least recently used ones it needs
room for. So caching never admits fewer requests than no caching.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.adaptive import AdaptiveState
from engine.config import SchedulerConfig
from engine.prefix_cache import BLOCK_TOKENS, PrefixCache, block_hashes, reusable_hashes
from engine.sequence import SeqStatus, Sequence

# The runner's K/V of blocks [first, first + num) of a sequence's tokens, one payload per block.
SaveBlocks = Callable[[Sequence, int, int, int], list[object]]


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens [start, start + num_tokens) of one sequence, prefilled in one step."""

    seq: Sequence
    start: int
    num_tokens: int
    # The sequence's first chunk after a prefix-cache hit: the K/V payloads of its `start`
    # cached tokens, one per block, which the runner copies in before computing the chunk.
    cached: tuple[object, ...] = field(default=(), compare=False, repr=False)

    @property
    def is_first(self) -> bool:
        """The sequence's first chunk: it takes a slot (after its cached tokens, if any)."""
        return self.start == self.seq.num_cached_tokens

    @property
    def is_last(self) -> bool:
        """This chunk completes the prompt: the step samples the sequence's first token."""
        return self.start + self.num_tokens == self.seq.num_prompt_tokens


@dataclass(frozen=True)
class Plan:
    """One step: prefill the joining sequences, or decode the running ones, or wait.

    Without a token budget exactly one of `prefill` / `decode` is non-empty, or both are empty
    and `wake_at_s` says when waiting work becomes due (None: nothing to do until a new
    arrival). With one, `prefill` stays empty and a step may hold `decode` and `chunks` together.
    """

    prefill: tuple[Sequence, ...] = ()
    decode: tuple[Sequence, ...] = ()
    wake_at_s: float | None = None
    chunks: tuple[PrefillChunk, ...] = ()

    @property
    def is_idle(self) -> bool:
        return not self.prefill and not self.decode and not self.chunks


@dataclass
class Scheduler:
    """Decides what to admit and what to run next for the `static`, `continuous` or `adaptive` policy."""

    config: SchedulerConfig
    kv_budget_tokens: int
    max_model_len: int | None = None  # the model's context; None = unlimited (simulations)
    waiting: deque[Sequence] = field(default_factory=deque)
    running: list[Sequence] = field(default_factory=list)
    _adaptive: AdaptiveState | None = field(default=None, repr=False)
    _cache: tuple[SchedulerConfig, PrefixCache] | None = field(default=None, repr=False)

    @property
    def max_wait_s(self) -> float:
        return self.config.max_wait_ms / 1000.0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def can_ever_fit(self, seq: Sequence) -> bool:
        return seq.max_num_tokens <= self.kv_budget_tokens

    def add(self, seq: Sequence) -> bool:
        """Queue a sequence; one that can never run is failed at once, alone (not its batch)."""
        error = self._never_runs(seq)
        if error is not None:
            seq.status, seq.finish_reason, seq.error = SeqStatus.FAILED, "error", error
            return False
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)
        return True

    def _never_runs(self, seq: Sequence) -> str | None:
        if not seq.prompt_ids:
            return "empty prompt; send at least one token"
        if self.max_model_len is not None and seq.max_num_tokens > self.max_model_len:
            return (f"prompt {seq.num_prompt_tokens} + max_new_tokens {seq.params.max_new_tokens} "
                    f"exceeds the model's context of {self.max_model_len} tokens; shorten it")
        if not self.can_ever_fit(seq):
            return (f"request needs {seq.max_num_tokens} KV tokens (prompt {seq.num_prompt_tokens} + "
                    f"max_new_tokens {seq.params.max_new_tokens}) but the KV budget is "
                    f"{self.kv_budget_tokens}; shorten it or raise the KV budget")
        return None

    def schedule(self, now_s: float) -> Plan:
        """Plan the next step at time `now_s`."""
        plan = self._schedule(now_s)
        if plan.prefill and self.prefix_cache is not None:  # each prefill after its cached blocks
            return Plan(chunks=tuple(map(self._whole_tail, plan.prefill)), wake_at_s=plan.wake_at_s)
        return plan

    def _schedule(self, now_s: float) -> Plan:
        if self.config.policy == "static":
            return self._schedule_static(now_s)
        if self.config.policy == "adaptive":
            return self._schedule_adaptive(now_s)
        if self.config.max_num_batched_tokens is not None:
            return self._schedule_chunked(now_s)
        return self._schedule_continuous(now_s)

    def observe(self, phase: str, num_seqs: int, num_tokens: int, duration_s: float) -> None:
        """Learn from one executed step (the adaptive policy's step-time fit)."""
        if self.config.policy == "adaptive":
            self.adaptive.observe(phase, num_seqs, num_tokens, duration_s)

    @property
    def adaptive(self) -> AdaptiveState:
        """The adaptive policy's state; a new config (reconfigure) starts it afresh."""
        if self._adaptive is None or self._adaptive.config is not self.config:
            self._adaptive = AdaptiveState(self.config)
        return self._adaptive

    @property
    def prefix_cache(self) -> PrefixCache | None:
        """This config's prefix cache (None when off); a new config starts an empty one."""
        if not self.config.enable_prefix_caching:
            return None
        if self._cache is None or self._cache[0] is not self.config:
            max_tokens = int(self.config.prefix_cache_share * self.kv_budget_tokens)
            self._cache = (self.config, PrefixCache(max_tokens // BLOCK_TOKENS))
        return self._cache[1]

    def cache_computed(self, seq: Sequence, num_tokens: int, save: SaveBlocks) -> None:
        """Keep the full blocks of `seq`'s first `num_tokens` tokens (prompt, then output), as
        many as the budget leaves room for; `save` gives the new blocks' payloads."""
        cache = self.prefix_cache
        if cache is None:
            return
        hashes = block_hashes((seq.prompt_ids + seq.output_ids)[:num_tokens], cache.block_tokens)
        num_old = cache.num_cached(hashes)
        room = min(cache.max_num_blocks, self._num_room_blocks(cache))
        num_new = max(0, min(len(hashes), room) - num_old)
        payloads = save(seq, num_old, num_new, cache.block_tokens) if num_new else []
        cache.insert(hashes[: num_old + num_new], payloads, room)

    def _num_room_blocks(self, cache: PrefixCache) -> int:
        """Blocks the budget leaves beside the running rows (`rows x longest`)."""
        longest = max((s.max_num_tokens for s in self.running), default=0)
        return max(0, self.kv_budget_tokens - len(self.running) * longest) // cache.block_tokens

    def _whole_tail(self, seq: Sequence) -> PrefillChunk:
        chunk = self._first_chunk(seq, seq.num_prompt_tokens)
        seq.num_computed_tokens = seq.num_prompt_tokens
        return chunk

    def _first_chunk(self, seq: Sequence, num_left: int) -> PrefillChunk:
        """A sequence's first chunk: after its cached blocks, which it touches (and carries)."""
        cache = self.prefix_cache
        cached: tuple[object, ...] = ()
        if cache is not None:
            cached = tuple(cache.match(reusable_hashes(seq.prompt_ids, cache.block_tokens)))
            seq.num_cached_tokens = seq.num_computed_tokens = len(cached) * cache.block_tokens
        num_tokens = min(seq.num_prompt_tokens - seq.num_computed_tokens, num_left)
        return PrefillChunk(seq, seq.num_computed_tokens, num_tokens, cached)

    def _num_uncached(self, seq: Sequence) -> int:
        """Prompt tokens a waiting sequence would prefill, as the cache stands now."""
        cache = self.prefix_cache
        if cache is None:
            return seq.num_prompt_tokens
        hashes = reusable_hashes(seq.prompt_ids, cache.block_tokens)
        return seq.num_prompt_tokens - cache.num_cached(hashes) * cache.block_tokens

    def finish(self, seqs: list[Sequence]) -> None:
        """Forget finished or failed sequences (they leave the batch)."""
        gone = {id(s) for s in seqs}
        self.running = [s for s in self.running if id(s) not in gone]
        if any(id(s) in gone for s in self.waiting):
            self.waiting = deque(s for s in self.waiting if id(s) not in gone)

    def _schedule_static(self, now_s: float) -> Plan:
        # Request-level batching: a formed batch runs to completion before the next one forms.
        if self.running:
            return Plan(decode=tuple(self.running))
        return self._admit(now_s, num_free=self.config.max_batch_size)

    def _schedule_continuous(self, now_s: float) -> Plan:
        # Iteration-level batching: joiners are prefilled between decode steps.
        num_free = self.config.max_batch_size - len(self.running)
        plan = self._admit(now_s, num_free) if num_free > 0 else Plan()
        if not plan.is_idle or not self.running:
            return plan
        return Plan(decode=tuple(self.running), wake_at_s=plan.wake_at_s)

    def _schedule_adaptive(self, now_s: float) -> Plan:
        # Continuous batching with a cap and a wait chosen now (engine/adaptive.py).
        state = self.adaptive
        self.waiting = state.reorder(self.waiting, now_s)
        cap = state.batch_cap()
        if self.waiting and (state.is_ttft_at_risk(self.waiting[0], now_s)
                             or state.protects_nobody(self.running, now_s)):
            cap = self.config.max_batch_size
        num_free = cap - len(self.running)
        plan = Plan()
        if num_free > 0 and self.waiting:
            plan = self._admit(now_s, num_free, state.wait_s(self.waiting[0], len(self.running)))
        if not plan.is_idle or not self.running:
            return plan
        return Plan(decode=tuple(self.running), wake_at_s=plan.wake_at_s)

    def _admit(self, now_s: float, num_free: int, max_wait_s: float | None = None) -> Plan:
        """Admit waiting sequences once enough wait to fill the free slots or the oldest is due."""
        if not self.waiting:
            return Plan()
        due_at_s = self.waiting[0].sent_s + (self.max_wait_s if max_wait_s is None else max_wait_s)
        # 1 ns slack: sums of float step times must not miss a deadline by rounding error.
        if len(self.waiting) < num_free and now_s + 1e-9 < due_at_s:
            return Plan(wake_at_s=due_at_s)
        joining = self._take_fitting(num_free)
        if not joining:  # head waits for running sequences to free KV memory
            return Plan()
        for seq in joining:
            seq.status = SeqStatus.RUNNING
            seq.admitted_s = now_s
        self.running.extend(joining)
        cache = self.prefix_cache
        if cache is not None:  # cached blocks give back the room the joiners' rows take
            cache.evict_to(self._num_room_blocks(cache))
        return Plan(prefill=tuple(joining))

    def _take_fitting(self, num_free: int) -> list[Sequence]:
        # FIFO: stop at the first sequence that does not fit, so none is starved.
        joining: list[Sequence] = []
        longest = max((s.max_num_tokens for s in self.running), default=0)
        while self.waiting and len(joining) < num_free:
            head = self.waiting[0]
            num_rows = len(self.running) + len(joining) + 1
            if num_rows * max(longest, head.max_num_tokens) > self.kv_budget_tokens:
                break
            longest = max(longest, head.max_num_tokens)
            joining.append(self.waiting.popleft())
        return joining

    # --- prefill token budget (chunked prefill); see the module doc ---

    def _schedule_chunked(self, now_s: float) -> Plan:
        """Decode every prefilled row; prompt chunks, oldest first, take the rest of the budget."""
        decode = tuple(s for s in self.running if s.num_output_tokens > 0)
        num_left = self.config.max_num_batched_tokens - len(decode)
        chunks = self._plan_chunks([s for s in self.running if s.num_output_tokens == 0], num_left)
        num_left -= sum(c.num_tokens for c in chunks)
        # Admit only those this step starts to prefill: admitted_s marks when prefill began.
        num_free = min(self.config.max_batch_size - len(self.running), self._num_reachable(num_left))
        admitted = self._admit(now_s, num_free) if num_free > 0 else Plan()
        chunks += self._plan_chunks(list(admitted.prefill), num_left)
        return Plan(decode=decode, chunks=tuple(chunks), wake_at_s=admitted.wake_at_s)

    def _plan_chunks(self, seqs: list[Sequence], num_left: int) -> list[PrefillChunk]:
        chunks: list[PrefillChunk] = []
        for seq in seqs:
            if num_left <= 0:  # before a first chunk's cache match: a matched sequence must run
                break
            if seq.num_computed_tokens == 0:
                chunk = self._first_chunk(seq, num_left)
            else:
                num_tokens = min(seq.num_prompt_tokens - seq.num_computed_tokens, num_left)
                chunk = PrefillChunk(seq, seq.num_computed_tokens, num_tokens)
            chunks.append(chunk)
            seq.num_computed_tokens += chunk.num_tokens  # committed at plan time, as in vLLM
            num_left -= chunk.num_tokens
        return chunks

    def _num_reachable(self, num_left: int) -> int:
        """How many waiting sequences, from the head, `num_left` tokens would start to prefill."""
        count = 0
        for seq in self.waiting:
            if num_left <= 0:
                break
            count += 1
            num_left -= self._num_uncached(seq)
        return count
