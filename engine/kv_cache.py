"""The padded KV cache: growable per-layer buffers, and stacking, interleaving and trimming rows.

Rows are right-aligned: row i holds `pads[i]` padding columns, then its real tokens, so every
row ends at the last column and a decode step appends one column for all rows, in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from engine.models import ModelLoadError

# Spare KV columns per (re)allocation: decode appends in place and copies the cache once every
# GROW_COLUMNS steps, where a plain DynamicLayer copies it every step (~25% of a CPU decode step
# for builtin:small at batch 16, 200 tokens). Costs at most rows x GROW_COLUMNS tokens of memory.
GROW_COLUMNS = 64


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
class PrefilledBatch:
    """Freshly prefilled rows, about to join the running batch."""

    cache: DynamicCache  # per layer k, v: [N, H, L, D]
    mask: torch.Tensor  # [N, L] bool
    next_pos: torch.Tensor  # [N, 1]
    tokens: torch.Tensor  # [N, 1]
    pads: list[int]


def interleave(parts: list[PrefilledBatch], groups: list[list[int]]) -> PrefilledBatch:
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
    return PrefilledBatch(
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


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
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

