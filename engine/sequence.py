"""Per-request state and timeline. Plain Python: the scheduler and the metrics read it, no torch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class SamplingParams:
    """How to generate for one request. temperature 0 = greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    ignore_eos: bool = False
    seed: int | None = None


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. Times are seconds on the engine's clock.

    scheduled_s: when the load generator meant to send it (latency is measured from here,
    so a stalled client cannot hide server delay); sent_s: when it was handed to the engine;
    admitted_s: when the scheduler put it in a batch (its prefill started).
    """

    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    scheduled_s: float
    sent_s: float
    admitted_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    done_s: float | None = None
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None  # "length" | "stop" | "error" | "cancelled"
    error: str | None = None
    num_computed_tokens: int = 0  # prompt tokens already prefilled (chunked prefill progress)
    # Prompt tokens reused from the prefix cache instead of computed, set when its prefill
    # starts (whole blocks; 0 with prefix caching off, an exact count either way).
    num_cached_tokens: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def max_num_tokens(self) -> int:
        """Length this sequence can reach: what it may need in the KV cache."""
        return len(self.prompt_ids) + self.params.max_new_tokens

    @property
    def first_token_s(self) -> float | None:
        return self.token_times_s[0] if self.token_times_s else None

    @property
    def is_finished(self) -> bool:
        return self.status in (SeqStatus.FINISHED, SeqStatus.FAILED)
