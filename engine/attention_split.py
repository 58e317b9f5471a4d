"""Which decode rows attend alone. The batched decode attention (engine/llama.py) reads every
row's K/V up to the widest row's context: the padding mask hides the columns past a shorter
row's length, but the kernel still reads them, and the read is the cost (the step's weights
have flushed the K/V from the caches). So one long row makes every row pay for its length. A
row attended alone reads only its own context but costs one more attention call per layer.

The split minimises the tokens read: `rows x width` for the batch (every row, the long ones
too, reads `width` columns there) plus each long row's own length and a call's cost.
builtin:small, 16 rows of mean context ~100, 8 layers, caches flushed, one thread: the batch
over a widest row of 274 took 8.8 ms, each row alone 4.7 ms; at a widest row of 132, 3.5 and
5.5 ms. One attention call costs about what reading 64 more tokens of one row costs there.
"""

from __future__ import annotations

ROW_CALL_TOKENS = 64


def split_long_rows(lengths: list[int], call_tokens: int = ROW_CALL_TOKENS) -> tuple[int, list[int]]:
    """(width, long) for decode rows of these context lengths: the batch attends over `width`
    columns and the rows at indices `long` (longest first) attend alone, minimising
    `len(lengths) * width + sum(length + call_tokens over long)`; ties keep the batch whole."""
    if not lengths:
        return 0, []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    num_rows = len(lengths)
    best, best_cost, alone = 0, num_rows * lengths[order[0]], 0
    for num_long in range(1, num_rows):  # at least one row stays in the batch
        alone += lengths[order[num_long - 1]] + call_tokens
        cost = num_rows * lengths[order[num_long]] + alone
        if cost < best_cost:
            best, best_cost = num_long, cost
    return lengths[order[best]], order[:best]
