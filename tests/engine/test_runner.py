"""HFRunner (the Hugging Face path): batched, padded, join/leave decoding equals each request
decoded alone. The builtins take the lean path by default (tests/engine/test_llama_runner.py);
these tests pin the padded-cache runner, which every non-Llama-family model uses."""

from __future__ import annotations

import random

import pytest
import torch

from engine import kv_cache as kv_cache_module
from engine.baselines import hf_generate, raw_decode_loop
from engine.config import EngineConfig, SchedulerConfig
from engine.core import EngineCore
from engine.models import LoadedModel, init_random_weights, load_model
from engine.runner import GROW_COLUMNS, HFRunner, ModelRunner, UnsupportedModelError, prefill_groups
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny forwards gain nothing from threads, and on a busy 2-core machine OpenMP spin-waits
    # make them ~10x slower (unless OMP_WAIT_POLICY=PASSIVE is set before torch loads).
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(EngineConfig(model="builtin:tiny", device="cpu"))


def prompt(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(256) for _ in range(length)]


def seq(seq_id: int, length: int, max_new_tokens: int = 64, **params) -> Sequence:
    params = SamplingParams(max_new_tokens=max_new_tokens, **params)
    return Sequence(seq_id, prompt(seq_id, length), params, scheduled_s=0.0, sent_s=0.0)


class Driver:
    """Drives a runner through joins, decode steps and leaves; records each sequence's tokens."""

    def __init__(self, loaded: LoadedModel, max_pad_fraction: float | None = None) -> None:
        self.runner = HFRunner(loaded, max_pad_fraction)
        self.tokens: dict[int, list[int]] = {}

    def join(self, *seqs: Sequence) -> None:
        for s, token in zip(seqs, self.runner.prefill(list(seqs)), strict=True):
            self.tokens[s.seq_id] = [token]
        check_invariants(self.runner)

    def decode(self, num_steps: int = 1, reverse: bool = False) -> None:
        for _ in range(num_steps):
            rows = list(reversed(self.runner.rows)) if reverse else list(self.runner.rows)
            for s, token in zip(rows, self.runner.decode(rows), strict=True):
                self.tokens[s.seq_id].append(token)
            check_invariants(self.runner)

    def leave(self, *seqs: Sequence) -> None:
        self.runner.release(list(seqs))
        check_invariants(self.runner)


def check_invariants(runner: HFRunner) -> None:
    """Right-aligned rows, no all-padding leading column, masks/positions consistent."""
    if not runner.rows:
        assert runner.num_cache_tokens == 0 and not runner.cache.layers
        return
    num_cols = runner.num_cache_tokens
    assert min(runner.pads) == 0  # never longer than the longest live row
    expected_mask = torch.arange(num_cols)[None, :] >= torch.tensor(runner.pads)[:, None]
    assert torch.equal(runner.mask, expected_mask)
    assert runner.next_pos[:, 0].tolist() == [num_cols - p for p in runner.pads]
    for layer in runner.cache.layers:
        assert layer.keys.shape[0] == len(runner.rows) and layer.keys.shape[2] == num_cols


_SOLO: dict[tuple, list[int]] = {}


def solo_tokens(loaded: LoadedModel, s: Sequence, num_tokens: int) -> list[int]:
    """The request alone in the runner (no padding, no neighbours); memoised per module."""
    key = (id(loaded), tuple(s.prompt_ids), s.params, num_tokens)
    if key not in _SOLO:
        driver = Driver(loaded)
        driver.join(Sequence(0, list(s.prompt_ids), s.params, 0.0, 0.0))
        driver.decode(num_tokens - 1)
        _SOLO[key] = driver.tokens[0]
    return _SOLO[key]


def hf_forward_tokens(loaded: LoadedModel, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Greedy tokens from plain HF forwards over the whole unpadded sequence (no cache at all)."""
    ids = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(num_tokens):
            logits = loaded.model(input_ids=torch.tensor([ids])).logits  # [1, L, V]
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def assert_each_equals_solo(loaded: LoadedModel, driver: Driver, seqs: list[Sequence]) -> None:
    for s in seqs:
        got = driver.tokens[s.seq_id]
        assert got == solo_tokens(loaded, s, len(got)), f"sequence {s.seq_id} diverged"


def test_solo_runner_matches_plain_hf_forwards(tiny: LoadedModel) -> None:
    for s in (seq(1, 9), seq(2, 31)):
        assert solo_tokens(tiny, s, 24) == hf_forward_tokens(tiny, s.prompt_ids, 24)


def test_prefill_groups_bound_padding_and_keep_request_order() -> None:
    assert prefill_groups([5], 0.25) == [[0]]
    assert prefill_groups([64, 64, 64], 0.25) == [[0, 1, 2]]
    assert prefill_groups([10, 100, 12, 90, 50, 11], 0.25) == [[1, 3, 4], [0, 2, 5]]
    assert prefill_groups([16, 128, 70], float("inf")) == [[0, 1, 2]]
    lengths = [16, 128, 70, 33, 100, 20, 60, 90, 120, 17, 45, 80, 110, 25, 55, 99]
    groups = prefill_groups(lengths, 0.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert max(lengths[i] for i in g) * len(g) <= 1.25 * sum(lengths[i] for i in g)


def test_greedy_outputs_are_varied(tiny: LoadedModel) -> None:
    tokens = solo_tokens(tiny, seq(3, 12), 40)
    assert len(set(tokens)) >= 10


@pytest.mark.parametrize("max_pad_fraction", [0.25, float("inf")])  # length groups | one group
def test_different_prompt_lengths_in_one_prefill(tiny: LoadedModel, max_pad_fraction) -> None:
    driver = Driver(tiny, max_pad_fraction)
    seqs = [seq(10, 5), seq(11, 23), seq(12, 11), seq(13, 1), seq(14, 22), seq(15, 4)]
    driver.join(*seqs)
    driver.decode(12)
    assert_each_equals_solo(tiny, driver, seqs)
    a, b = seqs[0], seqs[1]
    assert driver.tokens[b.seq_id] == hf_forward_tokens(tiny, b.prompt_ids, 13)
    assert driver.tokens[a.seq_id] == hf_forward_tokens(tiny, a.prompt_ids, 13)


def test_joins_mid_flight_longer_and_shorter_than_the_batch(tiny: LoadedModel) -> None:
    driver, (a, b, c, d) = Driver(tiny), (seq(20, 7), seq(21, 30), seq(22, 3), seq(23, 2))
    driver.join(a)
    driver.decode(3)
    driver.join(b, c)  # b is longer than the running context: the running rows shift right
    driver.decode(4)
    driver.join(d)  # shorter than everything
    driver.decode(5)
    assert_each_equals_solo(tiny, driver, [a, b, c, d])


def test_leaves_in_the_middle_and_the_longest_row_leaving(tiny: LoadedModel) -> None:
    driver = Driver(tiny)
    a, b, c, d = seq(30, 40), seq(31, 6), seq(32, 12), seq(33, 9)
    driver.join(a, b, c, d)
    driver.decode(3)
    driver.leave(c)  # a middle row
    driver.decode(3)
    longest = driver.runner.num_cache_tokens
    driver.leave(a)  # the longest row: its leading columns are trimmed away
    assert driver.runner.num_cache_tokens == len(d.prompt_ids) + 6 < longest
    driver.decode(4)
    driver.leave(seq(99, 3))  # unknown: ignored
    driver.decode(2)
    assert_each_equals_solo(tiny, driver, [a, b, c, d])


def test_a_batch_emptied_then_refilled(tiny: LoadedModel) -> None:
    driver, (a, b, c, d) = Driver(tiny), (seq(40, 8), seq(41, 15), seq(42, 4), seq(43, 20))
    driver.join(a, b)
    driver.decode(3)
    driver.leave(b, a)
    assert driver.runner.num_rows == 0
    driver.join(c)
    driver.decode(2)
    driver.join(d)
    driver.decode(3)
    assert_each_equals_solo(tiny, driver, [a, b, c, d])


def test_decode_maps_rows_by_identity_in_any_order(tiny: LoadedModel) -> None:
    driver, seqs = Driver(tiny), [seq(50, 4), seq(51, 13), seq(52, 8)]
    driver.join(*seqs)
    driver.decode(3, reverse=True)
    driver.leave(seqs[1])
    driver.decode(2, reverse=True)
    assert_each_equals_solo(tiny, driver, seqs)


def test_long_decodes_grow_the_cache_past_its_spare_columns(tiny: LoadedModel) -> None:
    driver, (a, b) = Driver(tiny), (seq(60, 10), seq(61, 5))
    driver.join(a)
    driver.decode(GROW_COLUMNS // 2)
    driver.join(b)
    driver.decode(GROW_COLUMNS + 5)
    assert driver.runner.num_cache_tokens > GROW_COLUMNS
    assert_each_equals_solo(tiny, driver, [a, b])


def test_decode_rejects_sequences_that_are_not_the_rows(tiny: LoadedModel) -> None:
    runner, a, b = HFRunner(tiny), seq(70, 5), seq(71, 6)
    runner.prefill([a, b])
    with pytest.raises(ValueError, match="running rows"):
        runner.decode([a])
    with pytest.raises(ValueError, match="running rows"):
        runner.decode([a, seq(72, 3)])
    with pytest.raises(ValueError, match="already in the batch"):
        runner.prefill([a])
    with pytest.raises(ValueError, match="empty prompt"):
        runner.prefill([Sequence(73, [], SamplingParams(), 0.0, 0.0)])
    assert runner.num_rows == 2  # a failed prefill leaves the batch as it was
    assert len(runner.decode([b, a])) == 2


def test_a_failed_join_leaves_the_running_batch_intact(tiny: LoadedModel, monkeypatch) -> None:
    driver, (a, b, c) = Driver(tiny), (seq(74, 9), seq(75, 4), seq(76, 30))
    driver.join(a, b)
    driver.decode(2)
    calls, real_stack = [], kv_cache_module.stack_right_aligned

    def failing_stack(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # mask, layer 0 keys, layer 0 values, then layer 1 keys: "OOM"
            raise RuntimeError("out of memory")
        return real_stack(*args, **kwargs)

    monkeypatch.setattr(kv_cache_module, "stack_right_aligned", failing_stack)
    with pytest.raises(RuntimeError, match="out of memory"):
        driver.join(c)  # longer than the batch: layer 0 had been shifted and widened
    monkeypatch.undo()
    assert driver.runner.rows == [a, b]
    check_invariants(driver.runner)
    driver.decode(3)
    driver.join(c)
    driver.decode(2)
    assert_each_equals_solo(tiny, driver, [a, b, c])


def tiny_hf_model(family: str) -> LoadedModel:
    """A random two-layer model of another family, built from its config (no download)."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")  # fmt: skip
    if family == "qwen2":  # attention biases
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:  # sliding-window attention over a window shorter than the test's sequences
        model = MistralForCausalLM(MistralConfig(sliding_window=8, **shape))
    init_random_weights(model, seed=0)
    return LoadedModel(model.eval(), None, family, torch.device("cpu"), torch.float32,
                       eos_token_id=None, pad_token_id=0, max_context_tokens=1024,
                       num_params=0, kv_bytes_per_token=0)  # fmt: skip


@pytest.mark.parametrize("family", ["qwen2", "mistral-sliding-window"])
def test_other_decoder_families_decode_like_plain_forwards(family: str) -> None:
    loaded = tiny_hf_model(family)
    driver, (a, b, c) = Driver(loaded), (seq(120, 5), seq(121, 17), seq(122, 11))
    driver.join(a, b)
    driver.decode(3)
    driver.join(c)
    driver.decode(4)
    driver.leave(b)
    driver.decode(6)
    for s in (a, b, c):
        got = driver.tokens[s.seq_id]
        assert got == hf_forward_tokens(loaded, s.prompt_ids, len(got)), f"{family} {s.seq_id}"


def test_models_with_non_attention_layers_are_refused(tiny: LoadedModel) -> None:
    from types import SimpleNamespace

    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=2)
    config.layer_types = ["full_attention", "linear_attention"]
    hybrid = LoadedModel(SimpleNamespace(config=config), None, "hybrid", torch.device("cpu"),
                         torch.float32, None, 0, 1024, 0, 0)  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="'hybrid'.*linear_attention"):
        ModelRunner(hybrid)


class StepClock:
    """A virtual clock: one tick per read."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def now(self) -> float:
        self.now_s += 0.001
        return self.now_s


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_engine_core_and_scheduler_drive_the_runner(tiny: LoadedModel, policy: str) -> None:
    scheduler = Scheduler(SchedulerConfig(policy=policy, max_batch_size=3), kv_budget_tokens=4096)
    core = EngineCore(scheduler, HFRunner(tiny), StepClock(), eos_token_id=None)
    lengths, outputs = [5, 17, 9, 30, 2, 12, 7], [6, 2, 9, 4, 11, 3, 5]
    seqs = [seq(80 + i, n, m) for i, (n, m) in enumerate(zip(lengths, outputs, strict=True))]
    for s in seqs:
        core.add(s)
    while scheduler.has_work:
        core.step()
    assert core.executor.num_rows == 0
    for s, m in zip(seqs, outputs, strict=True):
        assert s.output_ids == solo_tokens(tiny, s, m) and s.finish_reason == "length"


@pytest.mark.parametrize("budget", [3, 8, 20])
def test_chunked_prefill_gives_the_same_greedy_tokens(tiny: LoadedModel, budget: int) -> None:
    # Long prompts are prefilled in chunks across steps, next to running decodes; each request's
    # greedy tokens still equal its solo run (the unchunked reference).
    config = SchedulerConfig(max_batch_size=3, max_num_batched_tokens=budget)
    core = EngineCore(Scheduler(config, kv_budget_tokens=4096), HFRunner(tiny), StepClock(), None)
    lengths, outputs = [5, 17, 9, 30, 2, 12, 7], [6, 2, 9, 4, 11, 3, 5]
    seqs = [seq(80 + i, n, m) for i, (n, m) in enumerate(zip(lengths, outputs, strict=True))]
    for s in seqs:
        core.add(s)
    while core.scheduler.has_work:
        core.step()
    assert "mixed" in {step.phase for step in core.steps}
    assert max(step.num_tokens for step in core.steps) <= budget
    assert core.executor.num_rows == 0 and not core.executor._partials
    for s, m in zip(seqs, outputs, strict=True):
        assert s.output_ids == solo_tokens(tiny, s, m) and s.finish_reason == "length"


def test_a_request_cancelled_mid_prefill_leaves_no_partial_cache(tiny: LoadedModel) -> None:
    config = SchedulerConfig(max_batch_size=2, max_num_batched_tokens=4)
    core = EngineCore(Scheduler(config, kv_budget_tokens=4096), HFRunner(tiny), StepClock(), None)
    long_ = seq(90, 30, 3)
    core.add(long_)
    core.step()  # its first 4 prompt tokens
    assert list(core.executor._partials) == [id(long_)]
    core.fail([long_], "cancelled", "cancelled")
    assert not core.executor._partials and not core.scheduler.has_work


def sampled(seq_id: int, length: int, **params) -> Sequence:
    return seq(seq_id, length, temperature=params.pop("temperature", 1.0), **params)


def test_seeded_sampling_is_reproducible_in_any_batch(tiny: LoadedModel) -> None:
    alone = Driver(tiny)
    s = sampled(90, 11, top_p=0.9, seed=123)
    alone.join(s)
    alone.decode(15)
    mixed = Driver(tiny)
    others = [seq(91, 20), sampled(92, 4, seed=7), sampled(93, 8)]  # greedy, seeded, unseeded
    mixed.join(others[0])
    mixed.decode(2)
    mixed.join(sampled(90, 11, top_p=0.9, seed=123), *others[1:])
    mixed.decode(15)
    assert mixed.tokens[90] == alone.tokens[90]
    assert mixed.tokens[91] == solo_tokens(tiny, others[0], len(mixed.tokens[91]))  # still greedy
    assert all(0 <= t < tiny.model.config.vocab_size for t in mixed.tokens[93])


def test_temperature_changes_outputs_and_a_tiny_top_p_is_greedy(tiny: LoadedModel) -> None:
    driver = Driver(tiny)
    hot = [sampled(100 + i, 6 + i, temperature=1.5, seed=i) for i in range(3)]
    nucleus_of_one = sampled(110, 9, temperature=1.5, top_p=1e-6, seed=0)
    driver.join(*hot, nucleus_of_one)
    driver.decode(15)
    assert any(driver.tokens[s.seq_id] != solo_tokens(tiny, seq(s.seq_id, 6 + i), 16)
               for i, s in enumerate(hot))  # fmt: skip
    assert driver.tokens[110] == solo_tokens(tiny, seq(110, 9), 16)


def test_baselines_count_tokens_and_time(tiny: LoadedModel) -> None:
    prompts = [prompt(i, 12) for i in range(3)]
    num_tokens, seconds = raw_decode_loop(tiny, prompts, 5)
    assert num_tokens == 15 and seconds > 0
    useful, seconds = hf_generate(tiny, [prompt(5, 4), *prompts], [2, 6, 3, 1], batch_size=3)
    assert useful == 12 and seconds > 0
    with pytest.raises(ValueError, match="one length"):
        raw_decode_loop(tiny, [prompt(1, 3), prompt(2, 4)], 2)
