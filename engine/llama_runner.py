"""The lean executor for Llama-family models: packed steps over a slot KV cache.

Every step is one forward (engine/llama.py): the decode rows' pending tokens, then the prompt
chunks' tokens, packed without padding. A prefill is a step of whole-prompt chunks, a decode a
step of rows only, a mixed step both: so chunked prefill, joins and leaves cost no cache move
and no second forward. A sequence holds its slot from its first chunk to its release.

Prefix caching: a sequence's first chunk may start after cached blocks; their K/V is copied
into its new slot first, so the chunk attends to them as to tokens it computed itself.
`save_blocks` copies a slot's blocks out for the cache (engine/prefix_cache.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from engine.attention_split import split_long_rows
from engine.compiled_decode import CompiledDecode
from engine.llama import (
    GATHER_FACTOR,
    SMALL_BATCH_ROWS,
    ChunkSpan,
    LongRow,
    StepInputs,
    chunk_mask,
    lean_model,
)
from engine.models import LoadedModel
from engine.sampling import RowSampling, sample
from engine.scheduler import PrefillChunk
from engine.sequence import SamplingParams, Sequence
from engine.slot_cache import CAPACITY_STEP, SlotKVCache

StepFn = Callable[[StepInputs, list[torch.Tensor], list[torch.Tensor]], torch.Tensor]


class LlamaRunner:
    """Executor over `LeanLlama` and a `SlotKVCache` (see the module doc)."""

    can_cache_prefixes = True

    def __init__(self, loaded: LoadedModel, compile_backend: str | None = None) -> None:
        self.loaded = loaded
        self.device = loaded.device
        self.model = lean_model(loaded.model)
        self.cache = SlotKVCache(self.model.num_layers, self.model.num_kv_heads, self.model.head_dim,
                                 loaded.dtype, self.device, loaded.max_context_tokens)
        # Pure decode steps may run compiled (engine/compiled_decode.py); mixed steps stay eager.
        self.decode_fn: StepFn = self.model
        if compile_backend is not None:
            compiled = CompiledDecode(self.model, compile_backend)
            self.cache.reallocate(SMALL_BATCH_ROWS + 1, CAPACITY_STEP)
            compiled.warm_up(self.cache.keys, self.cache.values)  # writes only into free slots
            self.decode_fn = compiled
        self.rows: list[Sequence] = []  # prefilled sequences, in join order
        self.pending: dict[int, int] = {}  # id(seq) -> its sampled token, not yet in the cache
        self.generators: dict[int, torch.Generator | None] = {}  # id(seq) -> its seeded stream

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Prefill whole prompts (one packed forward, no padding); they join the batch."""
        return self.mixed([], [PrefillChunk(s, 0, s.num_prompt_tokens) for s in seqs])

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One step for `seqs` (prefilled rows, any order); tokens in their order."""
        return self.mixed(seqs, [])

    @torch.inference_mode()
    def release(self, seqs: list[Sequence]) -> None:
        """Free the slots of `seqs` (unknown ones ignored): no cache moves."""
        gone = {id(s) for s in seqs}
        for key in gone:
            self.cache.remove(key)
            self.pending.pop(key, None)
            self.generators.pop(key, None)
        self.rows = [s for s in self.rows if id(s) not in gone]

    @torch.inference_mode()
    def mixed(self, decode: list[Sequence], chunks: list[PrefillChunk]) -> list[int]:
        """One forward: `decode`'s rows one token each, then `chunks`; tokens for `decode`, then
        for each last chunk's sequence."""
        self._check_decode(decode)
        self._start(chunks)
        order = sorted(range(len(decode)), key=lambda i: self.cache.slot_of[id(decode[i])])
        rows = [decode[i] for i in order]  # slot order: the attention view's row order
        step = self._inputs(rows, chunks)
        logits = (self.decode_fn if not chunks else self.model)(step, self.cache.keys, self.cache.values)
        sampled = [*rows, *(c.seq for c in chunks if c.is_last)]
        tokens = sample(logits, self._sampling(sampled)).tolist()  # [R]
        self._commit(rows, chunks, tokens)
        by_row = dict(zip(map(id, sampled), tokens, strict=True))
        return [by_row[id(s)] for s in decode] + [by_row[id(c.seq)] for c in chunks if c.is_last]

    def _check_decode(self, decode: list[Sequence]) -> None:
        if len({id(s) for s in decode}) != len(decode) or any(id(s) not in self.pending for s in decode):
            raise ValueError(f"decode needs running rows (prefilled, each once); got {len(decode)} "
                             "sequences that are not")

    def _start(self, chunks: list[PrefillChunk]) -> None:
        """Check each chunk continues its prompt; first chunks take a slot (and a sampling
        stream) and copy their cached blocks in."""
        firsts = [c for c in chunks if c.is_first]
        for chunk in firsts:
            self._check_joiner(chunk)
        for chunk in chunks:
            slot = self.cache.slot_of.get(id(chunk.seq)) if not chunk.is_first else None
            if not chunk.is_first and (slot is None or self.cache.lengths[slot] != chunk.start):
                done = 0 if slot is None else self.cache.lengths[slot]
                raise ValueError(f"sequence {chunk.seq.seq_id}: chunk starts at {chunk.start}, "
                                 f"but {done} prompt tokens are prefilled")
        self.cache.add([id(c.seq) for c in firsts], [c.seq.max_num_tokens for c in firsts])
        for chunk in firsts:
            seed = chunk.seq.params.seed
            self.generators[id(chunk.seq)] = (None if seed is None else
                                              torch.Generator(device=self.device).manual_seed(seed))
            if chunk.cached:
                self._load_cached(chunk)

    def _load_cached(self, chunk: PrefillChunk) -> None:
        """Copy a first chunk's cached blocks into positions [0, start) of its slot."""
        slot = self.cache.slot_of[id(chunk.seq)]
        kv = torch.cat(list(chunk.cached), dim=3)  # [L, 2, Hkv, start, D]
        for layer, (keys, values) in enumerate(zip(self.cache.keys, self.cache.values, strict=True)):
            keys[slot, :, : chunk.start] = kv[layer, 0]
            values[slot, :, : chunk.start] = kv[layer, 1]
        self.cache.lengths[slot] = chunk.start

    @torch.inference_mode()
    def save_blocks(self, seq: Sequence, first: int, num_blocks: int,
                    block_tokens: int) -> list[torch.Tensor]:
        """Copies of blocks [first, first + num_blocks) of `seq`'s slot: [L, 2, Hkv, block, D] each."""
        slot = self.cache.slot_of[id(seq)]
        start, stop = first * block_tokens, (first + num_blocks) * block_tokens
        if stop > self.cache.lengths[slot]:
            raise ValueError(f"sequence {seq.seq_id} has {self.cache.lengths[slot]} tokens cached, "
                             f"not {stop}")
        layers = zip(self.cache.keys, self.cache.values, strict=True)
        kv = torch.stack([torch.stack((k[slot, :, start:stop], v[slot, :, start:stop]))
                          for k, v in layers])  # [L, 2, Hkv, num_blocks x block_tokens, D]
        # One copy per block: evicting a block must free its memory, not a view's share of it.
        return [block.clone() for block in kv.split(block_tokens, dim=3)]

    def _check_joiner(self, chunk: PrefillChunk) -> None:
        seq = chunk.seq
        if chunk.start != sum(b.shape[3] for b in chunk.cached):  # [L, 2, Hkv, block, D] each
            raise ValueError(f"sequence {seq.seq_id}: its first chunk starts at {chunk.start} "
                             "but its cached blocks do not hold exactly that many tokens")
        if id(seq) in self.cache.slot_of:
            raise ValueError(f"sequence {seq.seq_id} is already in the batch")
        if not seq.prompt_ids:
            raise ValueError(f"sequence {seq.seq_id} has an empty prompt")
        if seq.max_num_tokens > self.loaded.max_context_tokens:
            raise ValueError(f"sequence {seq.seq_id} may reach {seq.max_num_tokens} tokens but "
                             f"{self.loaded.name} supports {self.loaded.max_context_tokens}")

    def _inputs(self, rows: list[Sequence], chunks: list[PrefillChunk]) -> StepInputs:
        """The packed step: rows' pending tokens at their lengths, then each chunk's tokens."""
        cache, slot_of = self.cache, self.cache.slot_of
        slots = [slot_of[id(s)] for s in rows]
        ids = [self.pending[id(s)] for s in rows]
        positions = [cache.lengths[i] for i in slots]
        token_slots = list(slots)
        spans, logit_index = [], list(range(len(rows)))
        group = self.model.num_heads // self.model.num_kv_heads
        is_eager = self.decode_fn is self.model or bool(chunks)
        uses_kernel = is_eager and self.model.uses_kernels()  # no masks to build
        for chunk in chunks:
            slot, end = slot_of[id(chunk.seq)], chunk.start + chunk.num_tokens
            ids += chunk.seq.prompt_ids[chunk.start : end]
            positions += range(chunk.start, end)
            token_slots += [slot] * chunk.num_tokens
            spans.append(ChunkSpan(slot, chunk.start, chunk.num_tokens, None if uses_kernel else
                                   chunk_mask(chunk.start, chunk.num_tokens, group, self.device)))
            if chunk.is_last:
                logit_index.append(len(ids) - 1)
        tensor = self._long
        num_view_rows = slots[-1] + 1 if slots else 0
        lengths = [p + 1 for p in positions[: len(rows)]]  # each row's context, its new token included
        if is_eager and not uses_kernel:  # SDPA: long rows attend alone
            decode_len, long = split_long_rows(lengths)
        else:  # the kernel reads each row's own length; a compiled decode step, one batch's
            decode_len, long = max(lengths, default=0), []
        mask = None if uses_kernel else self._decode_mask(
            slots, [min(n, decode_len) for n in lengths], num_view_rows, decode_len)
        position_ids = tensor(positions)
        return StepInputs(
            tensor(ids), position_ids, tensor(token_slots), len(rows), num_view_rows,
            None if slots == list(range(len(slots))) else tensor(slots),
            mask, decode_len, tuple(spans), None if not chunks else tensor(logit_index),
            is_small=len(ids) <= SMALL_BATCH_ROWS,
            is_gathered=num_view_rows > GATHER_FACTOR * len(rows) and bool(rows),
            long_rows=tuple(LongRow(i, slots[i], lengths[i]) for i in long),
            token_lengths=position_ids + 1 if uses_kernel else None,  # each token's context
        )

    def _long(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _decode_mask(self, slots: list[int], visible: list[int], num_view_rows: int,
                     decode_len: int) -> torch.Tensor | None:
        """[rows, 1, 1, S] additive: each decode row sees its `visible` columns (its context, or
        all S for a long row attended alone after; a float mask: SDPA on CPU converts a bool one
        on every call); None when every row sees all S columns."""
        if len(slots) == num_view_rows and min(visible, default=decode_len) == decode_len:
            return None
        lengths = [1] * num_view_rows  # a free slot's row: one visible column, never all masked
        for slot, num in zip(slots, visible, strict=True):
            lengths[slot] = num
        columns = torch.arange(decode_len, device=self.device)
        valid = torch.tensor(lengths, device=self.device)
        mask = torch.zeros(num_view_rows, 1, 1, decode_len, dtype=self.loaded.dtype, device=self.device)
        return mask.masked_fill_((columns[None, :] >= valid[:, None])[:, None, None, :], float("-inf"))

    def _sampling(self, seqs: list[Sequence]) -> RowSampling:
        params = [s.params for s in seqs]
        is_all_greedy = all(p.temperature <= 0 for p in params)
        if is_all_greedy:  # the hot path: no tensors built
            return RowSampling(torch.empty(0), torch.empty(0), [], True)
        return RowSampling(
            torch.tensor([p.temperature for p in params], device=self.device),
            torch.tensor([p.top_p for p in params], device=self.device),
            [self.generators[id(s)] for s in seqs], False,
        )

    def _commit(self, rows: list[Sequence], chunks: list[PrefillChunk], tokens: list[int]) -> None:
        cache = self.cache
        for seq, token in zip(rows, tokens, strict=False):
            cache.lengths[cache.slot_of[id(seq)]] += 1
            self.pending[id(seq)] = token
        last = iter(tokens[len(rows) :])
        for chunk in chunks:
            cache.lengths[cache.slot_of[id(chunk.seq)]] = chunk.start + chunk.num_tokens
            if chunk.is_last:
                self.pending[id(chunk.seq)] = next(last)
                self.rows.append(chunk.seq)
        if self.device.type == "cuda":  # a step without sampled tokens must not end before its kernels
            torch.cuda.synchronize(self.device)


@torch.inference_mode()
def lean_decode_loop(loaded: LoadedModel, prompt_ids: list[list[int]],
                     num_new_tokens: int) -> tuple[int, float]:
    """The bare loop on the lean forward: one prefill, then greedy decode steps with no
    scheduling, no bookkeeping and no per-step host sync; returns (output tokens, seconds).
    The ceiling for the engine's lean path, as `baselines.raw_decode_loop` is for the HF path."""
    if len({len(p) for p in prompt_ids}) != 1:
        raise ValueError("lean_decode_loop needs prompts of one length (it uses no mask)")
    runner = LlamaRunner(loaded)
    params = SamplingParams(max_new_tokens=num_new_tokens)
    seqs = [Sequence(i, p, params, 0.0, 0.0) for i, p in enumerate(prompt_ids)]
    num_rows = len(seqs)
    _sync(loaded.device)
    start_s = time.perf_counter()
    tokens = runner._long(runner.prefill(seqs))  # [B]; a fresh runner: rows are slots 0..B-1
    keys, values = runner.cache.keys, runner.cache.values  # allocated by the prefill
    slots = torch.arange(num_rows, device=loaded.device)
    uses_kernel = runner.model.uses_kernels()  # the engine's kernels, as in its steps
    for length in range(len(prompt_ids[0]), len(prompt_ids[0]) + num_new_tokens - 1):
        step = StepInputs(tokens, torch.full_like(tokens, length), slots, num_rows, num_rows,
                          None, None, length + 1, (), None, num_rows <= SMALL_BATCH_ROWS,
                          token_lengths=torch.full_like(tokens, length + 1) if uses_kernel else None)
        tokens = runner.model(step, keys, values).argmax(dim=-1)
    _sync(loaded.device)
    return num_rows * num_new_tokens, time.perf_counter() - start_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
