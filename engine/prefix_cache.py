"""The prefix cache: KV blocks of computed tokens kept for reuse, as vLLM's automatic prefix caching.

A sequence's tokens are cut into blocks of BLOCK_TOKENS; block i's key is the hash of block
i - 1's key and block i's tokens, so one key stands for one whole prefix, not for a block's
tokens alone. Only full blocks are kept. A new request reuses the longest chain of cached blocks
at the start of its prompt and prefills the rest; its last prompt token is always computed (its
logits give the first output token), so a fully cached prompt still prefills one block.

Pure: no torch, no clock. Each block holds an opaque payload, the runner's K/V of its tokens
(None in the simulator); the cache never reads it. Least recently used blocks go first. A chain
is touched deepest block first, so a block is always more recently used than any of its cached
children: the least recently used block is a leaf, and evicting it leaves every cached block's
prefix cached (a match is always a leading run, never a chain with a hole).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK_TOKENS = 16  # vLLM's default KV block size


def block_hashes(token_ids: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """One key per whole block of `token_ids`: the hash of the previous key and the block's tokens."""
    out, prev = [], 0
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        # Python's hash of a tuple of ints is not salted per process (only str/bytes are), so
        # keys agree between the router's process and the replicas'.
        prev = hash((prev, tuple(token_ids[start : start + block_tokens])))
        out.append(prev)
    return out


def reusable_hashes(prompt_ids: Sequence[int], block_tokens: int = BLOCK_TOKENS) -> list[int]:
    """Keys of the prompt blocks a request may reuse: those before its last token."""
    return block_hashes(prompt_ids[:-1], block_tokens)


class PrefixCache:
    """Block key -> payload, least recently used first, at most `max_num_blocks` blocks."""

    def __init__(self, max_num_blocks: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if max_num_blocks < 0 or block_tokens < 1:
            raise ValueError(f"bad prefix cache size: {max_num_blocks} blocks of {block_tokens}")
        self.max_num_blocks, self.block_tokens = max_num_blocks, block_tokens
        self.blocks: OrderedDict[int, object] = OrderedDict()
        self.num_evicted = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens of KV the cached blocks hold."""
        return len(self.blocks) * self.block_tokens

    def num_cached(self, hashes: Sequence[int]) -> int:
        """How many of `hashes`, from the first, are cached (a look only: nothing is touched)."""
        count = 0
        for key in hashes:
            if key not in self.blocks:
                break
            count += 1
        return count

    def match(self, hashes: Sequence[int]) -> list[object]:
        """Payloads of the leading cached run of `hashes`, which becomes the most recently used."""
        num = self.num_cached(hashes)
        self._touch(hashes[:num])
        return [self.blocks[key] for key in hashes[:num]]

    def insert(self, hashes: Sequence[int], payloads: Sequence[object], max_num_blocks: int) -> None:
        """Cache a chain: `hashes` from its first block, whose leading ones are cached already and
        the last len(payloads) are new; then evict down to `max_num_blocks` (and the cache's own cap)."""
        new = hashes[len(hashes) - len(payloads) :]
        if self.num_cached(hashes) < len(hashes) - len(payloads):
            raise ValueError("a new block's prefix is not cached")
        self.blocks.update(zip(new, payloads, strict=True))
        self._touch(hashes)
        self.evict_to(max_num_blocks)

    def evict_to(self, max_num_blocks: int) -> int:
        """Drop least recently used blocks until at most `max_num_blocks` (>= 0) remain; how many went."""
        limit = max(0, min(max_num_blocks, self.max_num_blocks))
        num = max(0, len(self.blocks) - limit)
        for _ in range(num):
            self.blocks.popitem(last=False)
        self.num_evicted += num
        return num

    def _touch(self, chain: Sequence[int]) -> None:
        for key in reversed(chain):  # deepest first: a parent ends more recent than its children
            self.blocks.move_to_end(key)
