"""The decode step under torch.compile: one graph for every batch size and context length.

Dynamic shapes (batch B, view rows, context S) and always the same inputs (the decode rows'
slots and an additive mask, even where the eager path passes None), so the graph is captured
once per device; a step of at most SMALL_BATCH_ROWS rows takes the transposed weights, a second
graph. Both are compiled at start-up by `warm_up`, never in the middle of a measured trial.
On a 2-core CPU inductor takes ~20-30 s per graph for builtin:small. The compiled step never
copies rows' K/V out (`StepInputs.is_gathered`): free slots below the highest live one cost it
attention work instead.
"""

from __future__ import annotations

import functools

import torch
import torch.fx.experimental._config as fx_config

from engine.llama import SMALL_BATCH_ROWS, LeanLlama, StepInputs


def decode_step(model: LeanLlama, is_small: bool, ids: torch.Tensor, slots: torch.Tensor,
                positions: torch.Tensor, mask: torch.Tensor, keys: list[torch.Tensor],
                values: list[torch.Tensor]) -> torch.Tensor:
    """Logits [B, V] of one decode token per row; the rows' slots are the attention's view rows."""
    # mask: [num_view_rows, S] additive; its unit dims are added here, so they stay literal 1s
    step = StepInputs(ids, positions, slots, ids.shape[0], mask.shape[0], slots, mask[:, None, None, :],
                      mask.shape[-1], (), None, is_small)
    return model(step, keys, values)


class CompiledDecode:
    """A `StepFn` for pure decode steps: the compiled `decode_step` (see the module doc)."""

    def __init__(self, model: LeanLlama, backend: str) -> None:
        self.model = model
        # One compiled function per weight layout: a flag chooses it, no size guard.
        self.compiled = {is_small: torch.compile(functools.partial(decode_step, model, is_small),
                                                 backend=backend, dynamic=True)
                         for is_small in (False, True)}

    def __call__(self, step: StepInputs, keys: list[torch.Tensor],
                 values: list[torch.Tensor]) -> torch.Tensor:
        mask = step.decode_mask
        mask = keys[0].new_zeros(step.num_view_rows, step.decode_len) if mask is None else mask[:, 0, 0]
        return self.run(step.is_small, step.ids, step.slots, step.positions, mask, keys, values)

    def run(self, is_small: bool, ids: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
            mask: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        # ids, slots, positions: [B]; mask: [rows, S]; keys, values: per layer [slots, Hkv, capacity, D]
        for tensor in (ids, slots, positions):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
        torch._dynamo.maybe_mark_dynamic(mask, [0, 1])
        for tensor in keys + values:
            torch._dynamo.maybe_mark_dynamic(tensor, [0, 2])  # slots and capacity: a reallocation
        args = (ids, slots, positions, mask, keys, values)
        with fx_config.patch(backed_size_oblivious=True):  # no 0/1 specialisation: no recompiles
            return self.compiled[is_small](*args)

    @torch.inference_mode()
    def warm_up(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Compile both graphs (small and large batches) on throw-away steps over slot 0..n-1."""
        for num_rows in (1, SMALL_BATCH_ROWS, SMALL_BATCH_ROWS + 1):  # B=1 specialises its graph
            if num_rows > keys[0].shape[0]:
                break
            ids = torch.zeros(num_rows, dtype=torch.long, device=keys[0].device)
            slots = torch.arange(num_rows, device=keys[0].device)
            mask = keys[0].new_zeros(num_rows, 2)
            self.run(num_rows <= SMALL_BATCH_ROWS, ids, slots, torch.ones_like(ids), mask, keys, values)
