"""The slot KV cache's bookkeeping: which sequence holds which slot, and when tensors move."""

from __future__ import annotations

import pytest
import torch

from engine.slot_cache import CAPACITY_STEP, SlotKVCache


def cache(max_capacity: int = 1024) -> SlotKVCache:
    return SlotKVCache(num_layers=2, num_kv_heads=2, head_dim=4, dtype=torch.float32,
                       device=torch.device("cpu"), max_capacity=max_capacity)


def test_the_first_join_allocates_exactly_its_rows_and_rounded_capacity():
    c = cache()
    assert c.add([10, 11, 12], [30, 70, 5]) == [0, 1, 2]
    assert (c.num_slots, c.capacity, c.num_reallocations) == (3, 2 * CAPACITY_STEP, 1)
    assert c.keys[0].shape == (3, 2, 2 * CAPACITY_STEP, 4) and len(c.values) == 2
    assert c.num_bytes() == 2 * 2 * 3 * 2 * 128 * 4 * 4


def test_a_leave_frees_its_slot_and_the_next_joiner_takes_the_lowest_free_one():
    c = cache()
    c.add([10, 11, 12], [30, 30, 30])
    keys = c.keys
    c.remove(11)
    c.remove(10)
    c.remove(99)  # unknown: ignored
    assert c.free_slots() == [0, 1] and c.num_live == 1
    assert c.add([13], [60]) == [0]
    assert c.keys is keys and c.num_reallocations == 1  # no tensor moved


def test_a_joiner_without_a_free_slot_reallocates_compacted_with_the_data_kept():
    c = cache()
    c.add([10, 11, 12], [30, 30, 30])
    for slot, length in ((0, 5), (2, 7)):
        c.lengths[slot] = length
        with torch.inference_mode():  # the cache holds inference tensors (runner steps write them)
            for t in c.keys + c.values:
                t[slot, :, :length] = slot + 1.0
    c.remove(11)  # a hole at slot 1
    assert c.add([13, 14], [40, 100]) == [2, 3]  # two joiners, one free slot: reallocate
    assert c.num_slots == 4 and c.capacity == 2 * CAPACITY_STEP and c.num_reallocations == 2
    assert c.slot_of == {10: 0, 12: 1, 13: 2, 14: 3} and c.lengths == [5, 7, 0, 0]
    for t in c.keys + c.values:
        assert torch.all(t[0, :, :5] == 1.0) and torch.all(t[1, :, :7] == 3.0)
        assert torch.all(t[2:] == 0)


def test_a_joiner_longer_than_the_capacity_reallocates_even_with_a_free_slot():
    c = cache()
    c.add([10, 11], [30, 30])
    c.remove(11)
    c.add([12], [300])
    assert (c.num_slots, c.capacity) == (2, 5 * CAPACITY_STEP)


def test_the_footprint_follows_the_live_rows_at_each_reallocation():
    # Sized to the live rows plus the joiners: 16 rows that left do not stay allocated when a
    # long joiner forces a reallocation (the scheduler's rows x longest bound at that moment).
    c = cache(max_capacity=4096)
    c.add(list(range(16)), [64] * 16)
    for key in range(15):
        c.remove(key)
    c.add([100], [4000])
    assert (c.num_slots, c.capacity) == (2, 4032) and c.slot_of == {15: 0, 100: 1}


def test_capacity_never_exceeds_the_model_context_and_bad_keys_are_refused():
    c = cache(max_capacity=100)
    c.add([1], [99])
    assert c.capacity == 100
    with pytest.raises(ValueError, match="holds 100"):
        c.add([2], [101])
    with pytest.raises(ValueError, match="already holds"):
        c.add([1], [5])
    with pytest.raises(ValueError, match="already holds"):
        c.add([3, 3], [5, 5])
    with pytest.raises(ValueError, match="drop cached tokens"):
        c.lengths[0] = 90
        c.reallocate(1, 10)
