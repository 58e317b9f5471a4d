"""The slot KV cache: per layer, K and V of every running sequence in one preallocated
[num_slots, Hkv, capacity, D] tensor each; a sequence owns one slot (row) from its first prompt
chunk to its release.

A decode step writes each row's new K/V in place at its length, and attention reads the slots
as a view (rows [0, n), columns [0, S)): no per-step copy, no concatenation. A join takes the
lowest free slot and a leave frees its slot; neither moves any cache. The tensors are
reallocated only when a joiner finds no free slot or a capacity shorter than its
prompt + max_new_tokens: then they are sized to exactly the live sequences plus the joiners
(capacity rounded up to CAPACITY_STEP tokens), and the live rows are copied, compacted, into
slots 0..n-1. So the footprint is `slots x capacity` as the scheduler admitted it at the last
reallocation: its `rows x longest max length` model (engine/scheduler.py).

Why slots, not paged blocks (vLLM, nano-vllm): in plain torch, attention over blocks needs
every row's blocks gathered into one tensor per layer per step, a copy as large as the KV read;
slots give the attention kernel a strided view instead. Free slots below the highest live one
cost attention work on empty rows until a joiner fills them.
"""

from __future__ import annotations

import torch

CAPACITY_STEP = 64  # capacity is rounded up to this many tokens: fewer reallocations


class SlotKVCache:
    """Slots, their owners and lengths (host-side bookkeeping) over the per-layer K/V tensors."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, max_capacity: int) -> None:
        self.shape = (num_kv_heads, head_dim)
        self.num_layers, self.dtype, self.device = num_layers, dtype, device
        self.max_capacity = max_capacity  # the model's context: no sequence needs more
        self.owners: list[int | None] = []  # per slot: the key (a sequence's id) holding it
        self.lengths: list[int] = []  # per slot: tokens cached
        self.max_tokens: list[int] = []  # per slot: the most tokens its sequence may reach
        self.slot_of: dict[int, int] = {}
        # Per layer: [num_slots, Hkv, capacity, D]. One tensor per layer, not one [L, ...] tensor:
        # a compiled step that writes into views of one input copies all of it (~30x slower).
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.num_reallocations = -1
        self.reallocate(0, 0)  # the empty cache, counted as no reallocation

    @property
    def num_slots(self) -> int:
        return len(self.owners)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def num_live(self) -> int:
        return len(self.slot_of)

    def free_slots(self) -> list[int]:
        return [i for i, owner in enumerate(self.owners) if owner is None]

    def add(self, keys: list[int], max_tokens: list[int]) -> list[int]:
        """A slot for each new key (lowest free first), reallocating only if they do not fit."""
        if any(k in self.slot_of for k in keys) or len(set(keys)) != len(keys):
            raise ValueError("a sequence already holds a slot")
        if max(max_tokens, default=0) > self.max_capacity:
            raise ValueError(f"a sequence may reach {max(max_tokens)} tokens; the cache holds "
                             f"{self.max_capacity} per slot")
        free = self.free_slots()
        if len(free) < len(keys) or max(max_tokens, default=0) > self.capacity:
            self.reallocate(self.num_live + len(keys), max(max_tokens + self.max_tokens))
            free = self.free_slots()
        for key, num, slot in zip(keys, max_tokens, free, strict=False):
            self.owners[slot], self.lengths[slot], self.max_tokens[slot] = key, 0, num
            self.slot_of[key] = slot
        return [self.slot_of[k] for k in keys]

    def remove(self, key: int) -> None:
        """Free `key`'s slot (unknown keys are ignored); its stale K/V is masked, never read."""
        slot = self.slot_of.pop(key, None)
        if slot is not None:
            self.owners[slot], self.lengths[slot], self.max_tokens[slot] = None, 0, 0

    @torch.inference_mode()  # always inference tensors: a compiled step guards on the kind
    def reallocate(self, num_slots: int, num_tokens: int) -> None:
        """New tensors of `num_slots` x `num_tokens` (rounded up); live rows compacted to 0..n-1."""
        capacity = min(self.max_capacity, -(-num_tokens // CAPACITY_STEP) * CAPACITY_STEP)
        live = sorted(self.slot_of.values())
        if num_slots < len(live) or capacity < max((self.lengths[s] for s in live), default=0):
            raise ValueError("reallocation would drop cached tokens")
        shape = (num_slots, self.shape[0], capacity, self.shape[1])
        # Zeros, not empty: a masked column's V is multiplied by 0, and 0 * NaN would be NaN.
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.num_layers)]
        length = max((self.lengths[s] for s in live), default=0)
        if live and length:
            index = torch.tensor(live, device=self.device)
            for new, old in zip(keys + values, self.keys + self.values, strict=True):
                new[: len(live), :, :length] = old[:, :, :length].index_select(0, index)
        self.keys, self.values = keys, values
        self.owners = [self.owners[s] for s in live] + [None] * (num_slots - len(live))
        self.lengths = [self.lengths[s] for s in live] + [0] * (num_slots - len(live))
        self.max_tokens = [self.max_tokens[s] for s in live] + [0] * (num_slots - len(live))
        self.slot_of = {owner: i for i, owner in enumerate(self.owners) if owner is not None}
        self.num_reallocations += 1

    def num_bytes(self) -> int:
        """Bytes the K/V tensors occupy."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
