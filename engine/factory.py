"""Build a running local engine from configs: load the model once, size the KV budget, start."""

from __future__ import annotations

import torch

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.models import LoadedModel, kv_budget_tokens, load_model
from engine.runner import ModelRunner
from engine.sequence import SamplingParams, Sequence
from engine.threads import set_engine_threads


def start_engine(config: EngineConfig, sched_config: SchedulerConfig,
                 num_threads: int | None = None) -> tuple[Engine, LoadedModel]:
    """Load `config.model` and start an engine thread over it (raises ModelLoadError). On a CPU
    its threads are `num_threads` (a replica's pinned cores), else all cores but one, left to
    the client sharing the process (engine/threads.py): chosen, never inherited."""
    loaded = load_model(config)
    if loaded.device.type == "cpu":
        set_engine_threads(num_threads)
    backend = "inductor" if config.should_compile(loaded.device.type) else None
    runner = ModelRunner(loaded, compile_backend=backend)
    if loaded.device.type == "cuda":  # the KV budget comes from what is free after a warm-up
        warm_up(runner)
    engine = Engine(runner, sched_config, kv_budget_tokens(loaded, config),
                    eos_token_id=loaded.eos_token_id, max_model_len=loaded.max_context_tokens)
    return engine.start(), loaded


def warm_up(runner: ModelRunner, num_rows: int = 4, prompt_len: int = 16, num_steps: int = 4) -> None:
    """A few joins and decode steps, then the allocator's cache emptied: cuBLAS workspaces,
    kernels (and a compiled decode step) exist before free memory sizes the KV budget."""
    seqs = [Sequence(i, [1] * prompt_len, SamplingParams(max_new_tokens=num_steps + 1), 0.0, 0.0)
            for i in range(num_rows)]
    runner.prefill(seqs)
    for _ in range(num_steps):
        runner.decode(seqs)
    runner.release(seqs)
    torch.cuda.synchronize(runner.device)
    torch.cuda.empty_cache()  # cached free blocks would read as used in mem_get_info
