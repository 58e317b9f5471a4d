"""The prefix_affinity router, pure and hand-checked: turns follow their session's replica."""

from __future__ import annotations

from engine.routing import (
    MAX_IMBALANCE,
    ROUTERS,
    PrefixAffinity,
    block_hashes,
    check_replicas,
    make_router,
)


def ids(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def test_it_is_a_known_router() -> None:
    assert "prefix_affinity" in ROUTERS
    check_replicas(2, "prefix_affinity")
    assert isinstance(make_router("prefix_affinity"), PrefixAffinity)


def test_block_hashes_chain_whole_blocks_only() -> None:
    a, b = block_hashes(ids(0, 10), 4), block_hashes(ids(0, 8) + [99, 98], 4)
    assert len(a) == 2 and a == b  # the partial third block is not hashed
    assert block_hashes([5, 6, 7, 8], 2)[1] != block_hashes([9, 9, 7, 8], 2)[1]  # prefix counts


def test_a_sessions_next_turn_goes_where_its_history_went() -> None:
    router = PrefixAffinity(block_tokens=4)
    turn1_a, turn1_b = ids(0, 16), ids(100, 16)
    assert router.pick([0, 0], turn1_a) == 0  # new: least outstanding (tie -> 0)
    assert router.pick([1, 0], turn1_b) == 1
    # Turn 2 of a re-sends turn 1 + answer + message: back to 0, though 0 is busier.
    assert router.pick([3, 0], turn1_a + ids(500, 8)) == 0
    assert router.pick([0, 2], turn1_b + ids(600, 8)) == 1


def test_without_a_prompt_or_a_match_it_is_least_outstanding() -> None:
    router = PrefixAffinity(block_tokens=4)
    assert router.pick([2, 1, 3]) == 1
    assert router.pick([2, 1, 3], ids(0, 8)) == 1


def test_a_short_shared_prefix_alone_does_not_pull() -> None:
    router = PrefixAffinity(block_tokens=4)
    system = ids(0, 8)
    assert router.pick([0, 0], system + ids(100, 4)) == 0
    # Shares 8 of 24 tokens (< half): a new conversation, placed by load.
    assert router.pick([1, 0], system + ids(200, 16)) == 1


def test_an_overloaded_affine_replica_is_passed_over() -> None:
    router = PrefixAffinity(block_tokens=4)
    prompt = ids(0, 16)
    assert router.pick([0, 0], prompt) == 0
    assert router.pick([MAX_IMBALANCE, 0], prompt) == 0  # at the limit: still affine
    assert router.pick([MAX_IMBALANCE + 1, 0], prompt) == 1  # beyond it: least outstanding
    assert router.pick([0, 0], prompt) == 1  # and the prefix now lives there


def test_remembered_blocks_are_bounded_least_recent_first() -> None:
    router = PrefixAffinity(block_tokens=4, max_blocks=4)
    router.pick([0, 0], ids(0, 16))  # 4 blocks -> replica 0
    router.pick([1, 0], ids(100, 8))  # 2 more: the 2 oldest of the first are forgotten
    assert router.pick([5, 0], ids(0, 16)) == 0  # its deeper blocks are still known
    router = PrefixAffinity(block_tokens=4, max_blocks=2)
    router.pick([0, 0], ids(0, 8))
    router.pick([1, 0], ids(100, 8))
    assert router.pick([1, 0], ids(0, 8)) == 1  # forgotten: placed by load
