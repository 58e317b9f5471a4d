"""The compiled decode step and the CUDA path: greedy outputs equal the eager reference.

On CPU the compiled runner is checked with torch.compile's `eager` backend (the same dynamo
capture, graph breaks and guards over the runner's cache; no generated kernels): inductor's
code generation takes minutes on a shared 2-core CPU. The inductor and CUDA checks run
where a GPU is present and are skipped, with that reason, elsewhere.
"""

from __future__ import annotations

import random

import pytest
import torch

from engine.config import EngineConfig, SchedulerConfig
from engine.factory import start_engine
from engine.models import LoadedModel, load_model
from engine.runner import ModelRunner
from engine.sequence import SamplingParams, Sequence

pytestmark = pytest.mark.slow
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU; none on this machine (scripts/gpu_check.sh)")


def seqs(num_new: int = 12) -> list[Sequence]:
    rng = random.Random(0)
    return [Sequence(i, [rng.randrange(256) for _ in range(n)], SamplingParams(max_new_tokens=num_new),
                     0.0, 0.0) for i, n in enumerate([5, 17, 9])]


def drive(runner: ModelRunner) -> dict[int, list[int]]:
    """Joins, decode steps at changing batch sizes and cache lengths, a leave: every shape change."""
    a, b, c = seqs()
    tokens = {s.seq_id: [t] for s, t in zip((a, b), runner.prefill([a, b]), strict=True)}

    def steps(n: int) -> None:
        for _ in range(n):
            for s, t in zip(runner.rows, runner.decode(list(runner.rows)), strict=True):
                tokens[s.seq_id].append(t)

    steps(4)
    tokens[c.seq_id] = runner.prefill([c])
    steps(4)
    runner.release([a])
    steps(4)
    return tokens


def test_config_compiles_the_decode_step_on_cuda_only_by_default():
    assert EngineConfig().should_compile("cuda") and not EngineConfig().should_compile("cpu")
    assert EngineConfig(compile_decode=True).should_compile("cpu")
    assert not EngineConfig(compile_decode=False).should_compile("cuda")


def test_compiled_decode_equals_eager_on_cpu():
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards gain nothing from threads on a busy machine
    try:
        tiny = load_model(EngineConfig(model="builtin:tiny", device="cpu"))
        assert drive(ModelRunner(tiny, compile_backend="eager")) == drive(ModelRunner(tiny))
    finally:
        torch.set_num_threads(num_threads)


@needs_cuda
def test_inductor_decode_equals_eager_on_cuda():
    # fp32 so that both paths pick the same argmax; bf16 kernels may round differently.
    small: LoadedModel = load_model(EngineConfig(model="builtin:small", device="cuda", dtype="float32"))
    assert drive(ModelRunner(small, compile_backend="inductor")) == drive(ModelRunner(small))


@needs_cuda
def test_cuda_engine_defaults_bf16_and_sizes_the_kv_budget_after_warm_up():
    engine, loaded = start_engine(EngineConfig(model="builtin:tiny", device="cuda"), SchedulerConfig())
    try:
        assert loaded.dtype == torch.bfloat16
        free_bytes, _ = torch.cuda.mem_get_info(loaded.device)
        assert 0 < engine.kv_budget_tokens * loaded.kv_bytes_per_token < free_bytes
    finally:
        engine.close()
