"""The engine's step loop, shared by the real engine (wall clock, torch runner) and the
simulator (virtual clock, cost model): the scheduler plans, the executor runs, the core commits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.scheduler import Plan, PrefillChunk, Scheduler
from engine.sequence import SeqStatus, Sequence


class Executor(Protocol):
    """Runs plans. Holds one row per running sequence (its KV cache, its last token)."""

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Add `seqs` to the batch, run their prompts, return each one's first token."""
        ...

    def decode(self, seqs: list[Sequence]) -> list[int]:
        """Run one decode step over the rows of `seqs`, return each one's next token."""
        ...

    def release(self, seqs: list[Sequence]) -> None:
        """Drop the rows of `seqs` (finished, failed or cancelled); unknown ones are ignored."""
        ...

    def mixed(self, decode: list[Sequence], chunks: list[PrefillChunk]) -> list[int]:
        """Decode `decode`'s rows one step and prefill `chunks` (a last chunk joins its sequence
        to the batch; a first chunk with `cached` payloads starts after them); tokens for
        `decode`, then for each last chunk's sequence."""
        ...

    def save_blocks(self, seq: Sequence, first: int, num_blocks: int, block_tokens: int) -> list[object]:
        """The K/V of blocks [first, first + num_blocks) of `seq`'s computed tokens, one payload
        per block, for the prefix cache (only executors with `can_cache_prefixes` are asked)."""
        ...


class Clock(Protocol):
    def now(self) -> float: ...


@dataclass(frozen=True)
class StepRecord:
    """One executed step, for realised batch size and step-time statistics."""

    start_s: float
    duration_s: float
    phase: str  # "prefill" | "decode" | "mixed" (decodes and prompt chunks in one step)
    num_seqs: int  # rows decoded (decode, mixed), prompts prefilled (prefill)
    num_tokens: int  # tokens processed: prompt tokens for prefill, one per row for decode
    # For the roofline: causal (query, key) pairs attended (attention FLOPs), and tokens whose
    # KV the step reads, each row's whole context once (memory traffic).
    num_attention_pairs: int = 0
    num_context_tokens: int = 0
    # Seconds from the previous step's end to this step's start when that step left requests
    # running (so this one was due at once): the engine's own per-step overhead (committing and
    # streaming tokens, scheduling) that step times miss. None after an idle engine.
    gap_s: float | None = None


SeqCallback = Callable[[Sequence], None]


class EngineCore:
    """Drives a Scheduler and an Executor one step at a time, stamping times from `clock`."""

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        clock: Clock,
        eos_token_id: int | None = None,
        on_token: SeqCallback | None = None,
        on_finish: SeqCallback | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.clock = clock
        self.eos_token_id = eos_token_id
        self.on_token = on_token
        self.on_finish = on_finish
        self.steps: list[StepRecord] = []
        self._due_since_s: float | None = None  # a step ended with requests running: next is due

    def add(self, seq: Sequence) -> None:
        """Queue `seq`; one that can never fit the KV budget finishes at once as failed."""
        if not self.scheduler.add(seq):
            seq.done_s = self.clock.now()
            self._notify_finish(seq)

    def step(self) -> Plan:
        """Plan and run one step; an idle plan (with its wake-up time) is returned unexecuted."""
        plan = self.scheduler.schedule(self.clock.now())
        if plan.is_idle:
            return plan
        if plan.chunks:
            return self._step_mixed(plan)
        seqs = list(plan.prefill or plan.decode)
        start_s = self.clock.now()
        try:
            tokens = (self.executor.prefill if plan.prefill else self.executor.decode)(seqs)
        except Exception as exc:  # OOM or a model error: fail this step's requests, stay usable
            self.fail(seqs, f"{type(exc).__name__}: {exc}")
            return plan
        end_s = self.clock.now()
        num_tokens = sum(s.num_prompt_tokens for s in seqs) if plan.prefill else len(seqs)
        phase = "prefill" if plan.prefill else "decode"
        pairs = sum(map(prefill_pairs, seqs)) if plan.prefill else sum(map(decode_pairs, seqs))
        context = num_tokens if plan.prefill else pairs  # a decode row reads its whole context
        self.steps.append(StepRecord(start_s, end_s - start_s, phase, len(seqs), num_tokens, pairs, context,
                                     self._gap_s(start_s)))
        self.scheduler.observe(phase, len(seqs), num_tokens, end_s - start_s)
        self._commit(seqs, tokens, end_s)
        return plan

    def _step_mixed(self, plan: Plan) -> Plan:
        """Run decodes and prompt chunks as one step; all its tokens are stamped at its end."""
        decode, chunks = list(plan.decode), list(plan.chunks)
        start_s = self.clock.now()
        try:
            tokens = self.executor.mixed(decode, chunks)
        except Exception as exc:
            self.fail(decode + [c.seq for c in chunks], f"{type(exc).__name__}: {exc}")
            return plan
        end_s = self.clock.now()
        num_tokens = len(decode) + sum(c.num_tokens for c in chunks)
        pairs = sum(map(decode_pairs, decode)) + sum(map(chunk_pairs, chunks))
        context = sum(map(decode_pairs, decode)) + sum(c.start + c.num_tokens for c in chunks)
        phase = "mixed" if decode else "prefill"
        num_seqs = len(decode) or len(chunks)
        self.steps.append(StepRecord(start_s, end_s - start_s, phase, num_seqs, num_tokens, pairs, context,
                                     self._gap_s(start_s)))
        if not decode:  # a prefill after cached blocks (the adaptive fit learns its tail's cost)
            self.scheduler.observe(phase, num_seqs, num_tokens, end_s - start_s)
        self._commit(decode + [c.seq for c in chunks if c.is_last], tokens, end_s)
        return plan

    def _gap_s(self, start_s: float) -> float | None:
        return None if self._due_since_s is None else max(0.0, start_s - self._due_since_s)

    def fail(self, seqs: list[Sequence], reason: str, finish_reason: str = "error") -> None:
        """End `seqs` without completing them (error or cancellation) and free their rows."""
        seqs = [s for s in seqs if not s.is_finished]
        self._due_since_s = None  # a failed step's time is no overhead
        try:
            self.executor.release(seqs)
        finally:
            now_s = self.clock.now()
            for seq in seqs:
                seq.status = SeqStatus.FAILED
                seq.finish_reason = finish_reason
                seq.error = reason
                seq.done_s = now_s
            self.scheduler.finish(seqs)
            for seq in seqs:
                self._notify_finish(seq)

    def _commit(self, seqs: list[Sequence], tokens: list[int], now_s: float) -> None:
        finished: list[Sequence] = []
        for seq, token in zip(seqs, tokens, strict=True):
            seq.output_ids.append(token)
            seq.token_times_s.append(now_s)
            reason = self._finish_reason(seq, token)
            if reason is not None:  # set before on_token, so a stream can end on this token
                seq.status, seq.finish_reason, seq.done_s = SeqStatus.FINISHED, reason, now_s
                finished.append(seq)
            self._keep_blocks(seq, is_finished=reason is not None)
            if self.on_token is not None:
                self.on_token(seq)
        if finished:
            self.executor.release(finished)
            self.scheduler.finish(finished)
            for seq in finished:
                self._notify_finish(seq)
        self._due_since_s = now_s if self.scheduler.running else None

    def _keep_blocks(self, seq: Sequence, is_finished: bool) -> None:
        """Hand the prefix cache what `seq` computed (before its slot is released): its prompt
        once prefilled (others sharing it may join meanwhile), everything when it finishes (the
        next turn of a conversation re-sends it). The last sampled token has no K/V yet."""
        if self.scheduler.prefix_cache is None:
            return
        if is_finished:
            num_tokens = seq.num_prompt_tokens + seq.num_output_tokens - 1
        elif seq.num_output_tokens == 1:
            num_tokens = seq.num_prompt_tokens
        else:
            return
        self.scheduler.cache_computed(seq, num_tokens, self.executor.save_blocks)

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        if seq.num_output_tokens >= seq.params.max_new_tokens:
            return "length"
        if not seq.params.ignore_eos and token == self.eos_token_id:
            return "stop"
        return None

    def _notify_finish(self, seq: Sequence) -> None:
        if self.on_finish is not None:
            self.on_finish(seq)


def decode_pairs(seq: Sequence) -> int:
    """Keys the pending token attends to: the prompt and every output token so far (itself included)."""
    return seq.num_prompt_tokens + seq.num_output_tokens


def prefill_pairs(seq: Sequence) -> int:
    """Causal (query, key) pairs of a whole prompt: L (L + 1) / 2."""
    return _triangle(seq.num_prompt_tokens)


def chunk_pairs(chunk: PrefillChunk) -> int:
    """Causal pairs of prompt positions [start, start + n): each attends to all before it."""
    return _triangle(chunk.start + chunk.num_tokens) - _triangle(chunk.start)


def _triangle(n: int) -> int:
    return n * (n + 1) // 2
