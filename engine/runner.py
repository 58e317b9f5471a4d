"""The torch executor: one batch of rows over one right-aligned, left-padded KV cache.

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
from transformers.cache_utils import DynamicLayer

from engine.models import LoadedModel, ModelLoadError
from engine.sequence import Sequence

MIN_TEMPERATURE = 1e-5
# Spare KV columns per (re)allocation: decode appends in place and copies the cache once every
# GROW_COLUMNS steps, where a plain DynamicLayer copies it every step (~25% of a CPU decode step
# for builtin:small at batch 16, 200 tokens). Costs at most rows x GROW_COLUMNS tokens of memory.
GROW_COLUMNS = 64


# A join's prompts are prefilled in length groups, each padded by at most this fraction of its
# real tokens. A CPU is compute-bound even for one short prompt, so padding is pure waste there
# (prompts of 16-128 tokens padded together waste ~40%); an accelerator runs a small batch in
# about the time of one row, so there extra forward calls cost more than moderate padding.
CPU_MAX_PAD_FRACTION = 0.25
ACCEL_MAX_PAD_FRACTION = 1.0
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


class UnsupportedModelError(ModelLoadError):
    """The model does not fit the runner (it needs a cache other than a plain DynamicCache)."""


class GrowableLayer(DynamicLayer):
    """A DynamicLayer that appends into spare columns instead of re-allocating every step."""

    # keys, values: [B, H, S, D] views of key_buf, value_buf: [B, H, capacity, D]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key_buf: torch.Tensor | None = None
        self.value_buf: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append [B, H, q, D] states; returns the valid [B, H, S + q, D] views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        num_old, num_new = self.get_seq_length(), key_states.shape[-2]
        if self.key_buf is None or num_old + num_new > self.key_buf.shape[-2]:
            self._grow(key_states, value_states, num_old + num_new + GROW_COLUMNS)
        self.key_buf[:, :, num_old : num_old + num_new].copy_(key_states)
        self.value_buf[:, :, num_old : num_old + num_new].copy_(value_states)
        self.adopt(self.key_buf, self.value_buf, num_old + num_new)
        return self.keys, self.values

    @classmethod
    def holding(cls, key_buf: torch.Tensor, value_buf: torch.Tensor, length: int) -> GrowableLayer:
        """A layer over these buffers, of which the first `length` columns are valid."""
        layer = cls()
        layer.lazy_initialization(key_buf, value_buf)
        layer.adopt(key_buf, value_buf, length)
        return layer

    def adopt(self, key_buf: torch.Tensor, value_buf: torch.Tensor, length: int) -> None:
        """Hold these buffers, of which the first `length` columns are valid."""
        self.key_buf, self.value_buf = key_buf, value_buf
        self.keys, self.values = key_buf[:, :, :length], value_buf[:, :, :length]

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, capacity: int) -> None:
        num_old = self.get_seq_length()
        key_buf = key_states.new_empty(_with_len(key_states.shape, capacity))
        value_buf = value_states.new_empty(_with_len(value_states.shape, capacity))
        if num_old:
            key_buf[:, :, :num_old].copy_(self.keys)
            value_buf[:, :, :num_old].copy_(self.values)
        self.key_buf, self.value_buf = key_buf, value_buf


def _with_len(shape: torch.Size, length: int) -> tuple[int, ...]:
    return (*shape[:2], length, *shape[3:])


def new_cache() -> DynamicCache:
    """An empty DynamicCache whose layers are GrowableLayers (created lazily, one per layer)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowableLayer
    return cache


@dataclass
class RowSampling:
    """Per-row sampling parameters, aligned with the cache's rows."""

    temperatures: torch.Tensor  # [B] float32, 0 = greedy
    top_ps: torch.Tensor  # [B] float32
    generators: list[torch.Generator | None]  # per-request seeded streams
    is_all_greedy: bool

    @classmethod
    def for_seqs(cls, seqs: list[Sequence], device: torch.device) -> RowSampling:
        params = [s.params for s in seqs]
        return cls(
            temperatures=torch.tensor([p.temperature for p in params], device=device),
            top_ps=torch.tensor([p.top_p for p in params], device=device),
            generators=[_generator(p.seed, device) for p in params],
            is_all_greedy=all(p.temperature <= 0 for p in params),
        )

    def cat(self, other: RowSampling) -> RowSampling:
        return RowSampling(
            torch.cat([self.temperatures, other.temperatures]),
            torch.cat([self.top_ps, other.top_ps]),
            self.generators + other.generators,
            self.is_all_greedy and other.is_all_greedy,
        )

    def take(self, rows: list[int]) -> RowSampling:
        """These rows, sharing their generators (a draw advances the same stream)."""
        return self.select(torch.tensor(rows, device=self.temperatures.device), rows)

    def select(self, keep: torch.Tensor, keep_list: list[int]) -> RowSampling:
        temperatures = self.temperatures.index_select(0, keep)
        return RowSampling(
            temperatures,
            self.top_ps.index_select(0, keep),
            [self.generators[i] for i in keep_list],
            not bool((temperatures > 0).any()),
        )


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


class ModelRunner:
    """Executor over a Hugging Face decoder-only model with a DynamicCache (see module doc)."""

    def __init__(self, loaded: LoadedModel, max_pad_fraction: float | None = None) -> None:
        check_supported(loaded)
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        if max_pad_fraction is None:
            is_cpu = self.device.type == "cpu"
            max_pad_fraction = CPU_MAX_PAD_FRACTION if is_cpu else ACCEL_MAX_PAD_FRACTION
        self.max_pad_fraction = max_pad_fraction
        self._forward_kwargs = forward_kwarg_names(self.model)
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

    def _prefill_group(self, seqs: list[Sequence], sampling: RowSampling) -> _Batch:
        ids, mask, pads = _left_pad([s.prompt_ids for s in seqs], self.loaded.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)  # ids, mask: [N, L]
        positions = (mask.long().cumsum(-1) - 1).clamp_(min=0)  # 0 at each row's first token
        cache = new_cache()
        logits = self._forward(ids, mask, positions, cache)  # [N, V]
        tokens = sample(logits, sampling)  # [N]
        return _Batch(cache, mask, positions[:, -1:] + 1, tokens[:, None], pads)

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One step for every row; `seqs` must be exactly the rows, in any order."""
        order = self._order_of(seqs)
        mask = torch.cat([self.mask, self._ones_column()], dim=1)  # [B, S+1]
        # No padded column anywhere: the mask says nothing, and building the model's 4-D mask
        # from it costs ~8% of a small model's step.
        step_mask = mask if any(self.pads) else None
        logits = self._forward(self.last_tokens, step_mask, self.next_pos, self.cache)  # [B, V]
        tokens = sample(logits, self.sampling)  # [B]
        self.mask, self.last_tokens = mask, tokens[:, None]
        self.next_pos += 1
        out = tokens.tolist()
        return out if order is None else [out[i] for i in order]

    @torch.inference_mode()
    def release(self, seqs: list[Sequence]) -> None:
        """Drop the rows of `seqs` (unknown ones ignored), then trim all-padding columns."""
        gone = {id(s) for s in seqs}
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

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """Logits of each row's last position: [B, V]."""
        kwargs: dict[str, Any] = {self._forward_kwargs.cache: cache}
        if self._forward_kwargs.has_logits_to_keep:
            kwargs["logits_to_keep"] = 1  # prefill: skip the [N, L, V] logits we never read
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        return out.logits[:, -1]

    def _join(self, seqs: list[Sequence], joined: _Batch, sampling: RowSampling) -> None:
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


@dataclass
class _Batch:
    """Freshly prefilled rows, about to join the running batch."""

    cache: DynamicCache  # per layer k, v: [N, H, L, D]
    mask: torch.Tensor  # [N, L] bool
    next_pos: torch.Tensor  # [N, 1]
    tokens: torch.Tensor  # [N, 1]
    pads: list[int]


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


def interleave(parts: list[_Batch], groups: list[list[int]]) -> _Batch:
    """Put separately prefilled groups back in request order, right-aligned to the longest."""
    length = max(p.mask.shape[1] for p in parts)
    num_rows = sum(len(g) for g in groups)
    device = parts[0].mask.device
    rows = [torch.tensor(g, device=device) for g in groups]
    cache = new_cache()
    for layers in zip(*(p.cache.layers for p in parts), strict=True):
        keys = _scatter_right([x.keys for x in layers], rows, num_rows, length, GROW_COLUMNS)
        values = _scatter_right([x.values for x in layers], rows, num_rows, length, GROW_COLUMNS)
        cache.layers.append(GrowableLayer.holding(keys, values, length))
    pads = [0] * num_rows
    for part, group in zip(parts, groups, strict=True):
        for row, pad in zip(group, part.pads, strict=True):
            pads[row] = pad + length - part.mask.shape[1]
    return _Batch(
        cache,
        _scatter_right([p.mask for p in parts], rows, num_rows, length),
        _scatter_right([p.next_pos for p in parts], rows, num_rows, 1),
        _scatter_right([p.tokens for p in parts], rows, num_rows, 1),
        pads,
    )


def _scatter_right(
    parts: list[torch.Tensor], rows: list[torch.Tensor], num_rows: int, length: int, spare: int = 0
) -> torch.Tensor:
    """Rows of `parts` at indices `rows`, right-aligned in `length` along dim 2 (or 1 if 2-D)."""
    # part: [n, H, L, D] (or [n, L]) -> out: [num_rows, H, length + spare, D] (or [num_rows, length])
    dim = 2 if parts[0].ndim == 4 else 1
    shape = list(parts[0].shape)
    shape[0], shape[dim] = num_rows, length + spare
    out = parts[0].new_zeros(shape)
    for part, index in zip(parts, rows, strict=True):
        num_cols = part.shape[dim]
        out.narrow(dim, length - num_cols, num_cols).index_copy_(0, index, part)
    return out


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-pad prompts: ids [N, L] long, mask [N, L] bool, pads per row."""
    length = max(len(p) for p in prompts)
    pads = [length - len(p) for p in prompts]
    ids = torch.tensor([[pad_id] * n + p for n, p in zip(pads, prompts, strict=True)], dtype=torch.long)
    mask = torch.arange(length)[None, :] >= torch.tensor(pads)[:, None]
    return ids, mask, pads


def stack_right_aligned(
    a: torch.Tensor, b: torch.Tensor, dim: int, length: int, spare: int = 0
) -> torch.Tensor:
    """Concatenate along dim 0, each right-aligned in `length` along `dim` (zeros on the left)."""
    # a: [B1, ..., S1, ...], b: [B2, ..., S2, ...] -> [B1 + B2, ..., length + spare, ...]
    shape = list(a.shape)
    shape[0], shape[dim] = a.shape[0] + b.shape[0], length + spare
    out = a.new_empty(shape)
    _place_right(out.narrow(0, 0, a.shape[0]).narrow(dim, 0, length), a, dim)
    _place_right(out.narrow(0, a.shape[0], b.shape[0]).narrow(dim, 0, length), b, dim)
    return out


def _place_right(dst: torch.Tensor, src: torch.Tensor, dim: int) -> None:
    num_pad = dst.shape[dim] - src.shape[dim]
    dst.narrow(dim, 0, num_pad).zero_()  # padding: masked out, zero so it can never be NaN
    dst.narrow(dim, num_pad, src.shape[dim]).copy_(src)


def stack_caches(cache: DynamicCache, joining: DynamicCache, length: int) -> None:
    """Append `joining`'s rows below `cache`'s, both right-aligned in `length` columns."""
    # Layer by layer, so the peak is one layer's extra copy, not the whole cache's. If an
    # allocation fails (OOM), the layers already stacked are rolled back to views of their old
    # rows: the running batch survives a failed join.
    num_rows, num_cols = cache.layers[0].keys.shape[0], cache.layers[0].keys.shape[2]
    done: list[GrowableLayer] = []
    try:
        for layer, other in zip(cache.layers, joining.layers, strict=True):
            keys = stack_right_aligned(layer.keys, other.keys, 2, length, GROW_COLUMNS)
            values = stack_right_aligned(layer.values, other.values, 2, length, GROW_COLUMNS)
            layer.adopt(keys, values, length)  # keys, values: [B1 + B2, H, length + spare, D]
            done.append(layer)
    except BaseException:
        shift = length - num_cols
        for layer in done:
            layer.adopt(layer.key_buf[:num_rows, :, shift:], layer.value_buf[:num_rows, :, shift:], num_cols)
        raise


def select_rows(cache: DynamicCache, keep: torch.Tensor, trim: int, length: int) -> None:
    """Keep rows `keep`, drop the first `trim` columns; `length` columns stay valid."""
    for layer in cache.layers:
        # One copy, of the buffer (spare columns included, so the next steps append in place).
        keys = layer.key_buf[:, :, trim:].index_select(0, keep)
        values = layer.value_buf[:, :, trim:].index_select(0, keep)
        layer.adopt(keys, values, length)


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


def check_plain_cache(cache: DynamicCache, model_name: str) -> None:
    """Fail clearly unless every layer is a GrowableLayer with [B, H, S, D] key/value tensors."""
    if not cache.layers or any(
        type(layer) is not GrowableLayer or layer.key_buf is None or layer.keys.ndim != 4
        for layer in cache.layers
    ):
        raise UnsupportedModelError(
            f"model {model_name!r} did not fill a plain per-layer key/value cache; the runner "
            "supports decoder-only attention models (Llama, Qwen, Mistral, ...)"
        )


def sample(logits: torch.Tensor, sampling: RowSampling) -> torch.Tensor:
    """Next token per row: argmax for greedy rows, temperature/top-p draws for the others."""
    # logits: [B, V] -> tokens: [B]
    if sampling.is_all_greedy:
        return logits.argmax(dim=-1)  # the hot path: no sampling cost when all rows are greedy
    greedy = logits.argmax(dim=-1)
    temperatures = sampling.temperatures.clamp(min=MIN_TEMPERATURE)[:, None]
    probs = torch.softmax(logits.float() / temperatures, dim=-1)
    if bool((sampling.top_ps < 1).any()):
        probs = _top_p_filter(probs, sampling.top_ps)
    drawn = _draw(probs, sampling.generators)
    return torch.where(sampling.temperatures > 0, drawn, greedy)


def _top_p_filter(probs: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Zero the tail beyond each row's nucleus (the top token always stays)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_ps[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Sample one token per row (exponential race: argmax p / E ~ Categorical(p))."""
    noise = torch.empty_like(probs).exponential_()
    for i, gen in enumerate(generators):
        if gen is not None:  # a seeded request draws from its own stream: batch-invariant
            noise[i].exponential_(generator=gen)
    return (probs / noise).argmax(dim=-1)
