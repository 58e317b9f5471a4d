"""Reference points for `tradeoff bench`: the bare forward loop (the ceiling) and HF generate."""

from __future__ import annotations

import time

import torch

from engine.kv_cache import new_cache
from engine.models import LoadedModel
from engine.runner import forward_kwarg_names


@torch.inference_mode()
def raw_decode_loop(
    loaded: LoadedModel, prompt_ids: list[list[int]], num_new_tokens: int
) -> tuple[int, float]:
    """Prefill once, then greedy-decode with bare forward calls; returns (output tokens, seconds).

    The ceiling for the engine: the same model calls on the same cache class, with no padding,
    no scheduling, no bookkeeping and no per-step host sync (the engine needs one per step).
    """
    if len({len(p) for p in prompt_ids}) != 1:
        raise ValueError("raw_decode_loop needs prompts of one length (it uses no padding)")
    ids = torch.tensor(prompt_ids, dtype=torch.long, device=loaded.device)  # [B, L]
    names = forward_kwarg_names(loaded.model)
    prefill_kwargs = {"logits_to_keep": 1} if names.has_logits_to_keep else {}
    _sync(loaded.device)
    start_s = time.perf_counter()
    cache = new_cache()
    logits = loaded.model(input_ids=ids, use_cache=True, **{names.cache: cache}, **prefill_kwargs)
    tokens = logits.logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
    for _ in range(num_new_tokens - 1):
        logits = loaded.model(input_ids=tokens, use_cache=True, **{names.cache: cache}).logits
        tokens = logits[:, -1].argmax(dim=-1, keepdim=True)
    _sync(loaded.device)
    return len(prompt_ids) * num_new_tokens, time.perf_counter() - start_s


@torch.inference_mode()
def hf_generate(
    loaded: LoadedModel,
    prompts: list[list[int]],
    max_new_tokens_per_request: list[int],
    batch_size: int,
) -> tuple[int, float]:
    """HF `generate` (greedy, EOS ignored) over left-padded batches taken in order.

    Each batch generates the longest of its requests; only the tokens each request asked for
    count. Returns (useful output tokens, seconds).
    """
    if len(prompts) != len(max_new_tokens_per_request):
        raise ValueError("need one max_new_tokens per prompt")
    _sync(loaded.device)
    start_s = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        num_new = max(max_new_tokens_per_request[first : first + batch_size])
        _generate_batch(loaded, batch, num_new)
    _sync(loaded.device)
    return sum(max_new_tokens_per_request), time.perf_counter() - start_s


def _generate_batch(loaded: LoadedModel, prompts: list[list[int]], num_new: int) -> torch.Tensor:
    length = max(len(p) for p in prompts)
    ids = [[loaded.pad_token_id] * (length - len(p)) + p for p in prompts]
    mask = [[0] * (length - len(p)) + [1] * len(p) for p in prompts]
    return loaded.model.generate(
        input_ids=torch.tensor(ids, device=loaded.device),  # [B, L], left-padded
        attention_mask=torch.tensor(mask, device=loaded.device),
        max_new_tokens=num_new,
        min_new_tokens=num_new,  # never stop at EOS: the same work as the engine's ignore_eos
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=loaded.pad_token_id,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
