"""The prefix cache alone: block keys, matching, LRU eviction (pure, no engine)."""

from __future__ import annotations

import pytest

from engine.prefix_cache import PrefixCache, block_hashes, reusable_hashes


def ids(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def test_block_keys_chain_whole_blocks_and_their_prefix() -> None:
    a = block_hashes(ids(0, 40), 16)
    assert len(a) == 2  # 8 trailing tokens make no block
    assert block_hashes(ids(0, 32) + [7] * 5, 16) == a  # same prefix, same keys
    assert block_hashes(ids(0, 16) + ids(100, 16), 16)[0] == a[0]
    assert block_hashes(ids(0, 16) + ids(100, 16), 16)[1] != a[1]
    # The same tokens after a different first block are another key: a key names a prefix.
    assert block_hashes([9] * 16 + ids(16, 16), 16)[1] != a[1]


def test_a_request_reuses_blocks_before_its_last_token_only() -> None:
    assert len(reusable_hashes(ids(0, 32), 16)) == 1  # the last token is always computed
    assert len(reusable_hashes(ids(0, 33), 16)) == 2


def test_a_match_is_the_leading_run_of_cached_blocks() -> None:
    cache = PrefixCache(max_num_blocks=8, block_tokens=4)
    chain = block_hashes(ids(0, 16), 4)
    cache.insert(chain[:2], ["p0", "p1"], max_num_blocks=8)
    assert cache.num_cached(chain) == 2
    assert cache.match(chain) == ["p0", "p1"]
    assert cache.match(block_hashes(ids(50, 16), 4)) == []
    cache.insert(chain, ["p2", "p3"], max_num_blocks=8)  # the chain's first two are cached already
    assert cache.match(chain) == ["p0", "p1", "p2", "p3"] and cache.num_tokens == 16


def test_a_block_without_its_prefix_is_refused() -> None:
    cache = PrefixCache(max_num_blocks=8, block_tokens=4)
    chain = block_hashes(ids(0, 12), 4)
    with pytest.raises(ValueError, match="prefix is not cached"):
        cache.insert(chain, ["p2"], max_num_blocks=8)


def test_eviction_takes_the_least_recently_used_leaf_first() -> None:
    cache = PrefixCache(max_num_blocks=4, block_tokens=4)
    a, b = block_hashes(ids(0, 12), 4), block_hashes(ids(100, 8), 4)
    cache.insert(a, ["a0", "a1", "a2"], max_num_blocks=4)
    cache.insert(b, ["b0", "b1"], max_num_blocks=4)  # 5 blocks > 4: a's deepest block goes
    assert cache.num_cached(a) == 2 and cache.num_cached(b) == 2 and cache.num_evicted == 1
    cache.match(a)  # a is now the most recently used, its root most of all
    assert cache.evict_to(2) == 2
    assert cache.num_cached(a) == 2 and cache.num_cached(b) == 0


def test_a_shared_parent_outlives_its_children() -> None:
    cache = PrefixCache(max_num_blocks=8, block_tokens=4)
    root = ids(0, 4)
    left, right = block_hashes(root + ids(10, 4), 4), block_hashes(root + ids(20, 4), 4)
    cache.insert(left, ["r", "l"], max_num_blocks=8)
    cache.insert(right, ["x"], max_num_blocks=8)  # its root is cached: one new block
    for limit in (2, 1):  # every state a match can see is prefix-closed
        cache.evict_to(limit)
        assert cache.num_cached(left[:1]) == 1
    assert cache.blocks == {left[0]: "r"}


def test_the_cap_and_the_room_both_bound_the_cache() -> None:
    cache = PrefixCache(max_num_blocks=3, block_tokens=4)
    chain = block_hashes(ids(0, 20), 4)
    cache.insert(chain, list("abcde"), max_num_blocks=10)  # the cache's own cap: 3
    assert cache.num_blocks == 3 and cache.num_cached(chain) == 3
    cache.evict_to(0)
    assert cache.num_blocks == 0 and cache.num_tokens == 0
