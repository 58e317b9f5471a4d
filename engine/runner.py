"""The torch executors. `ModelRunner(loaded)` picks one: the lean Llama-family executor
(engine/llama_runner.py: its own forward over a slot KV cache) where the model allows it, else
`HFRunner`, below: the Hugging Face forward over one right-aligned, left-padded KV cache.

Row i of the cache holds `pads[i]` padding columns, then its real tokens; every row ends at the
last column, so a decode step appends one column for all rows, in place (GrowableLayer).
Joiners are prefilled apart (left-padded, in groups of similar length) and stacked in; leavers
are dropped and the columns that became padding for every remaining row are trimmed, so the
cache is never longer than the longest live row.

Invariants, for B rows and S cache columns:
  mask:        [B, S] bool, mask[i, j] == (j >= pads[i])
  next_pos:    [B, 1] position id of each row's pending token == S - pads[i] (its real length)
  last_tokens: [B, 1] each row's pending token: generated, returned, not yet in the cache
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from engine.kv_cache import (
    GROW_COLUMNS,
    GrowableLayer,
    PrefilledBatch,
    UnsupportedModelError,
    check_plain_cache,
    interleave,
    left_pad,
    new_cache,
    select_rows,
    stack_caches,
    stack_right_aligned,
)
from engine.llama import lean_unsupported_reason
from engine.llama_runner import LlamaRunner
from engine.models import LoadedModel
from engine.sampling import RowSampling, sample
from engine.scheduler import PrefillChunk
from engine.sequence import Sequence

__all__ = [  # the cache helpers moved to kv_cache.py; importers of these names keep working
    "GROW_COLUMNS", "GrowableLayer", "HFRunner", "ModelRunner", "UnsupportedModelError", "new_cache",
    "prefill_groups",
]

# A join's prompts are prefilled in length groups, each padded by at most this fraction of its
# real tokens. A CPU is compute-bound even for one short prompt, so padding is pure waste there
# (prompts of 16-128 tokens padded together waste ~40%); an accelerator runs a small batch in
# about the time of one row, so there extra forward calls cost more than moderate padding.
CPU_MAX_PAD_FRACTION = 0.25
ACCEL_MAX_PAD_FRACTION = 1.0
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


def ModelRunner(loaded: LoadedModel, max_pad_fraction: float | None = None,  # named as a class: it was one
                compile_backend: str | None = None, is_lean: bool | None = None) -> HFRunner | LlamaRunner:
    """The executor for `loaded`: lean where `lean_unsupported_reason` allows (or `is_lean` says)."""
    check_supported(loaded)
    if is_lean is None:
        is_lean = lean_unsupported_reason(loaded.model) is None
    if is_lean:
        return LlamaRunner(loaded, compile_backend=compile_backend)
    return HFRunner(loaded, max_pad_fraction, compile_backend)


class HFRunner:
    """Executor over a Hugging Face decoder-only model with a DynamicCache (see module doc)."""

    def __init__(self, loaded: LoadedModel, max_pad_fraction: float | None = None,
                 compile_backend: str | None = None) -> None:
        check_supported(loaded)
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        # The decode step's forward, compiled when asked (torch.compile, dynamic shapes: batch and
        # cache length change every few steps); prefill stays eager, the reference path.
        self._decode_model = self.model
        if compile_backend == "inductor" and self.device.type == "cpu":
            raise UnsupportedModelError(
                f"cannot compile the decode step of {loaded.name!r} on a CPU: inductor fails on the "
                "Hugging Face forward there (size_bytes_is_heap_allocated_); only Llama-family models "
                "(the lean path) compile on a CPU; use --compile-decode off")
        if compile_backend is not None:
            self._decode_model = torch.compile(self.model, backend=compile_backend, dynamic=True)
        if max_pad_fraction is None:
            is_cpu = self.device.type == "cpu"
            max_pad_fraction = CPU_MAX_PAD_FRACTION if is_cpu else ACCEL_MAX_PAD_FRACTION
        self.max_pad_fraction = max_pad_fraction
        self._forward_kwargs = forward_kwarg_names(self.model)
        self._partials: dict[int, DynamicCache] = {}  # id(seq) -> cache of its prefilled chunks
        self._reset()

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def num_cache_tokens(self) -> int:
        """Cache length S (columns, padding included) shared by all rows."""
        return self.mask.shape[1]

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Prefill `seqs` (left-padded, in length groups), stack them into the running batch."""
        self._check_joiners(seqs)
        sampling = RowSampling.for_seqs(seqs, self.device)
        groups = prefill_groups([s.num_prompt_tokens for s in seqs], self.max_pad_fraction)
        parts = [self._prefill_group([seqs[i] for i in g], sampling.take(g)) for g in groups]
        joined = parts[0] if len(parts) == 1 else interleave(parts, groups)
        self._join(seqs, joined, sampling)
        return joined.tokens[:, 0].tolist()

    def _prefill_group(self, seqs: list[Sequence], sampling: RowSampling) -> PrefilledBatch:
        ids, mask, pads = left_pad([s.prompt_ids for s in seqs], self.loaded.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)  # ids, mask: [N, L]
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)  # 0 at each row's first token
        cache = new_cache()
        logits = self._forward(ids, mask, positions, cache)  # [N, V]
        tokens = sample(logits, sampling)  # [N]
        return PrefilledBatch(cache, mask, positions[:, -1:] + 1, tokens[:, None], pads)

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One step for every row; `seqs` must be exactly the rows, in any order."""
        order = self._order_of(seqs)
        mask = torch.cat([self.mask, self._ones_column()], dim=1)  # [B, S+1]
        # No padded column anywhere: the mask says nothing, and building the model's 4-D mask
        # from it costs ~8% of a small model's step.
        step_mask = mask if any(self.pads) else None
        logits = self._forward(self.last_tokens, step_mask, self.next_pos, self.cache,
                               self._decode_model)  # [B, V]
        tokens = sample(logits, self.sampling)  # [B]
        self.mask, self.last_tokens = mask, tokens[:, None]
        self.next_pos += 1
        out = tokens.tolist()
        return out if order is None else [out[i] for i in order]

    @torch.inference_mode()
    def release(self, seqs: list[Sequence]) -> None:
        """Drop the rows of `seqs` (unknown ones ignored), then trim all-padding columns."""
        gone = {id(s) for s in seqs}
        for seq in seqs:  # cancelled or failed while its prompt was being prefilled in chunks
            self._partials.pop(id(seq), None)
        keep_list = [i for i, s in enumerate(self.rows) if id(s) not in gone]
        if len(keep_list) == len(self.rows):
            return
        if not keep_list:
            self._reset()
            return
        pads = [self.pads[i] for i in keep_list]
        trim = min(pads)  # columns that are padding for every remaining row
        keep = torch.tensor(keep_list, device=self.device)
        try:
            select_rows(self.cache, keep, trim, self.num_cache_tokens - trim)
        except BaseException:  # layers half selected: drop the batch rather than decode a corrupt cache
            self._reset()
            raise
        self.mask = self.mask[:, trim:].index_select(0, keep)
        self.next_pos = self.next_pos.index_select(0, keep)
        self.last_tokens = self.last_tokens.index_select(0, keep)
        self.sampling = self.sampling.select(keep, keep_list)
        self.rows = [self.rows[i] for i in keep_list]
        self.pads = [p - trim for p in pads]

    @torch.inference_mode()
    def mixed(self, decode: list[Sequence], chunks: list[PrefillChunk]) -> list[int]:
        """Decode the running rows one step, then prefill `chunks`; last chunks join the batch."""
        # Two forward calls, not one fused ragged batch: a padded cache cannot hold rows of
        # different query lengths. Decode first, so joiners are not decoded this step.
        tokens = self.decode(decode) if decode else []
        whole = [c.seq for c in chunks if c.start == 0 and c.is_last]
        first_tokens = dict(zip(map(id, whole), self.prefill(whole), strict=True)) if whole else {}
        for chunk in chunks:
            if not (chunk.start == 0 and chunk.is_last):
                token = self._prefill_chunk(chunk)
                if token is not None:
                    first_tokens[id(chunk.seq)] = token
        if self.device.type == "cuda":  # a non-last chunk reads nothing back: wait for its kernels,
            torch.cuda.synchronize(self.device)  # or the step's end would be stamped too early
        return tokens + [first_tokens[id(c.seq)] for c in chunks if c.is_last]

    def _prefill_chunk(self, chunk: PrefillChunk) -> int | None:
        """Run one chunk of a prompt over its own cache; on the last, sample and join the batch."""
        seq = chunk.seq
        if chunk.start == 0:
            self._check_joiners([seq])
            self._partials[id(seq)] = new_cache()
        cache = self._partials[id(seq)]
        if cache.get_seq_length() != chunk.start:
            raise ValueError(f"sequence {seq.seq_id}: chunk starts at {chunk.start}, but "
                             f"{cache.get_seq_length()} prompt tokens are prefilled")
        end = chunk.start + chunk.num_tokens
        ids = torch.tensor([seq.prompt_ids[chunk.start : end]], device=self.device)  # [1, n]
        positions = torch.arange(chunk.start, end, device=self.device)[None]  # [1, n]
        logits = self._forward(ids, None, positions, cache)  # one unpadded row: no mask; [1, V]
        if not chunk.is_last:
            return None
        del self._partials[id(seq)]
        sampling = RowSampling.for_seqs([seq], self.device)
        token = sample(logits, sampling)  # [1]
        mask = torch.ones(1, end, dtype=torch.bool, device=self.device)
        next_pos = torch.full((1, 1), end, dtype=torch.long, device=self.device)
        self._join([seq], PrefilledBatch(cache, mask, next_pos, token[:, None], [0]), sampling)
        return int(token[0])

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: DynamicCache,
        model: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """Logits of each row's last position: [B, V]."""
        kwargs: dict[str, Any] = {self._forward_kwargs.cache: cache}
        if self._forward_kwargs.has_logits_to_keep:
            kwargs["logits_to_keep"] = 1  # prefill: skip the [N, L, V] logits we never read
        model = self.model if model is None else model
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1]

    def _join(self, seqs: list[Sequence], joined: PrefilledBatch, sampling: RowSampling) -> None:
        check_plain_cache(joined.cache, self.loaded.name)
        if not self.rows:
            self.cache = joined.cache
            self.mask, self.next_pos, self.last_tokens = joined.mask, joined.next_pos, joined.tokens
            self.rows, self.pads, self.sampling = list(seqs), joined.pads, sampling
            return
        num_cols = max(self.num_cache_tokens, joined.mask.shape[1])
        old_shift, new_shift = num_cols - self.num_cache_tokens, num_cols - joined.mask.shape[1]
        mask = stack_right_aligned(self.mask, joined.mask, 1, num_cols)
        stack_caches(self.cache, joined.cache, num_cols)  # atomic: rolls back if it fails
        self.mask = mask
        self.next_pos = torch.cat([self.next_pos, joined.next_pos])
        self.last_tokens = torch.cat([self.last_tokens, joined.tokens])
        self.sampling = self.sampling.cat(sampling)
        self.pads = [p + old_shift for p in self.pads] + [p + new_shift for p in joined.pads]
        self.rows.extend(seqs)

    def _reset(self) -> None:
        self.rows: list[Sequence] = []
        self.pads: list[int] = []  # leading padding columns per row (host copy, for trimming)
        self.cache = new_cache()
        self.mask = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
        self.next_pos = torch.zeros(0, 1, dtype=torch.long, device=self.device)
        self.last_tokens = torch.zeros(0, 1, dtype=torch.long, device=self.device)
        self.sampling = RowSampling.for_seqs([], self.device)
        self._ones = torch.ones(0, 1, dtype=torch.bool, device=self.device)

    def _ones_column(self) -> torch.Tensor:
        # Reused across steps: one allocation per batch-size change, not per step.
        if self._ones.shape[0] != self.num_rows:
            self._ones = torch.ones(self.num_rows, 1, dtype=torch.bool, device=self.device)
        return self._ones

    def _order_of(self, seqs: list[Sequence]) -> list[int] | None:
        """Row index of each of `seqs`; None when they are the rows in row order (the usual case)."""
        if len(seqs) == len(self.rows) and all(a is b for a, b in zip(seqs, self.rows, strict=True)):
            return None
        row_of = {id(s): i for i, s in enumerate(self.rows)}
        order = [row_of.get(id(s), -1) for s in seqs]
        if len(seqs) != len(self.rows) or -1 in order or len(set(order)) != len(order):
            raise ValueError(
                f"decode needs exactly the {len(self.rows)} running rows, got {len(seqs)} "
                "sequences that do not match them"
            )
        return order

    def _check_joiners(self, seqs: list[Sequence]) -> None:
        present = {id(s) for s in self.rows}
        for seq in seqs:
            if id(seq) in present:
                raise ValueError(f"sequence {seq.seq_id} is already in the batch")
            if not seq.prompt_ids:
                raise ValueError(f"sequence {seq.seq_id} has an empty prompt")
            if seq.max_num_tokens > self.loaded.max_context_tokens:
                raise ValueError(
                    f"sequence {seq.seq_id} may reach {seq.max_num_tokens} tokens but "
                    f"{self.loaded.name} supports {self.loaded.max_context_tokens}"
                )



@dataclass(frozen=True)
class ForwardKwargs:
    cache: str  # "cache" (transformers >= 5.x) or "past_key_values"
    has_logits_to_keep: bool


def forward_kwarg_names(model: torch.nn.Module) -> ForwardKwargs:
    """How this model's forward names its cache argument, and whether it takes logits_to_keep."""
    params = inspect.signature(model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    return ForwardKwargs(cache, "logits_to_keep" in params)


def prefill_groups(lengths: list[int], max_pad_fraction: float) -> list[list[int]]:
    """Split row indices into groups of similar length, padding each by <= max_pad_fraction."""
    groups: list[list[int]] = []
    total = 0  # real tokens in the last group
    for i in sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True):
        if groups:
            padded = lengths[groups[-1][0]] * (len(groups[-1]) + 1)  # [0] is the group's longest
            if padded <= (1 + max_pad_fraction) * (total + lengths[i]):
                groups[-1].append(i)
                total += lengths[i]
                continue
        groups.append([i])
        total = lengths[i]
    return [sorted(g) for g in groups]  # request order inside a group: one group == no reorder


def check_supported(loaded: LoadedModel) -> None:
    """Fail at start-up, in one line, for models whose layers need more than a K/V cache."""
    config = loaded.model.config
    layer_types = getattr(config.get_text_config(), "layer_types", None) or ATTENTION_LAYER_TYPES
    others = sorted(set(layer_types) - set(ATTENTION_LAYER_TYPES))
    if getattr(config, "is_encoder_decoder", False) or others:
        what = ", ".join(others) or "encoder-decoder"
        raise UnsupportedModelError(
            f"model {loaded.name!r} is not supported by the runner ({what} layers); use a "
            "decoder-only model with attention layers only (Llama, Qwen, Mistral, ...)"
        )


