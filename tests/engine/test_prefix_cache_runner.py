"""Prefix caching on the lean runner: cached K/V copied into a slot gives the same greedy tokens."""

from __future__ import annotations

import random

import pytest
import torch

from engine.config import ConfigError, EngineConfig, SchedulerConfig
from engine.core import EngineCore
from engine.engine import Engine
from engine.llama_runner import LlamaRunner
from engine.models import LoadedModel, load_model
from engine.runner import HFRunner
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(EngineConfig(model="builtin:tiny", device="cpu"))


class StepClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def now(self) -> float:
        self.now_s += 0.001
        return self.now_s


def tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(n)]


def run_all(core: EngineCore, prompts: list[list[int]], max_new: int) -> list[Sequence]:
    seqs = [Sequence(i, p, SamplingParams(max_new_tokens=max_new), 0.0, 0.0)
            for i, p in enumerate(prompts)]
    for s in seqs:
        core.add(s)
    while core.scheduler.has_work:
        core.step()
    return seqs


def conversation(tiny: LoadedModel, caching: bool, **knobs) -> tuple[list[Sequence], LlamaRunner]:
    """A first turn, then its next turn (history + a message) beside a request sharing 20 tokens."""
    config = SchedulerConfig(**{"max_batch_size": 4, **knobs}, enable_prefix_caching=caching)
    runner = LlamaRunner(tiny)
    core = EngineCore(Scheduler(config, kv_budget_tokens=4096), runner, StepClock(), None)
    (first,) = run_all(core, [tokens(1, 37)], 12)
    history = first.prompt_ids + first.output_ids
    later = run_all(core, [history + tokens(2, 9), first.prompt_ids[:20] + tokens(3, 30)], 10)
    return [first, *later], runner


@pytest.mark.parametrize("knobs", [{"policy": "continuous"}, {"policy": "static"},
                                   {"max_num_batched_tokens": 8}])
def test_greedy_tokens_are_the_same_with_caching_on_and_off(tiny: LoadedModel, knobs: dict) -> None:
    on, runner = conversation(tiny, True, **knobs)
    off, _ = conversation(tiny, False, **knobs)
    assert [s.output_ids for s in on] == [s.output_ids for s in off]
    # The next turn reuses 3 blocks: the first turn computed 37 + 12 - 1 = 48 tokens of K/V; the
    # other request shares one block (16 of its 20 tokens).
    assert [s.num_cached_tokens for s in on] == [0, 48, 16]
    assert [s.num_cached_tokens for s in off] == [0, 0, 0]
    assert runner.cache.num_live == 0


def test_saved_blocks_are_copies_of_the_slot(tiny: LoadedModel) -> None:
    runner = LlamaRunner(tiny)
    seq = Sequence(0, tokens(4, 40), SamplingParams(max_new_tokens=4), 0.0, 0.0)
    runner.prefill([seq])
    (block,) = runner.save_blocks(seq, 1, 1, 16)
    slot = runner.cache.slot_of[id(seq)]
    assert block.shape == (runner.model.num_layers, 2, runner.model.num_kv_heads, 16, runner.model.head_dim)
    assert torch.equal(block[0, 0], runner.cache.keys[0][slot, :, 16:32])
    runner.release([seq])
    with pytest.raises(KeyError):
        runner.save_blocks(seq, 0, 1, 16)


def test_the_hf_forward_refuses_prefix_caching_in_one_line(tiny: LoadedModel) -> None:
    with pytest.raises(ConfigError, match="prefix caching needs the lean runner"):
        Engine(HFRunner(tiny), SchedulerConfig(enable_prefix_caching=True), 4096)
    engine = Engine(HFRunner(tiny), SchedulerConfig(), 4096)
    with pytest.raises(ConfigError, match="prefix caching needs the lean runner"):
        engine.reconfigure(SchedulerConfig(enable_prefix_caching=True))
