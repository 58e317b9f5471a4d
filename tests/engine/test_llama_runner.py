"""The lean Llama-family path: greedy tokens equal the Hugging Face reference forward's, through
mixed-length batches, joins and leaves mid-stream, chunked prefill and sampling."""

from __future__ import annotations

import random

import pytest
import torch

from engine.config import EngineConfig, SchedulerConfig
from engine.core import EngineCore
from engine.cpu_kernels import cpu_kernels
from engine.llama import lean_model, lean_unsupported_reason
from engine.llama_runner import LlamaRunner, lean_decode_loop
from engine.models import LoadedModel, init_random_weights, load_model
from engine.runner import HFRunner, ModelRunner
from engine.scheduler import Scheduler
from engine.sequence import SamplingParams, Sequence

pytestmark = pytest.mark.slow  # loads builtin:tiny once for the module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    num_threads = torch.get_num_threads()  # tiny forwards gain nothing from threads
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(EngineConfig(model="builtin:tiny", device="cpu"))


@pytest.fixture(autouse=True, params=["c-kernels", "torch"])
def ops(request, tiny: LoadedModel):
    """Every test here runs both ways: on the C kernels (engine/cpu_kernels.py) and on torch's
    ops alone (with more threads, other dtypes and devices, and the compiled step)."""
    model = lean_model(tiny.model)
    kernel = cpu_kernels()
    if request.param == "c-kernels" and kernel is None:
        pytest.skip("no C compiler here: the CPU kernels cannot be built")
    model.kernels = kernel if request.param == "c-kernels" else None
    yield request.param
    model.kernels = kernel


def seq(seq_id: int, length: int, max_new_tokens: int = 64, **params) -> Sequence:
    rng = random.Random(seq_id)
    ids = [rng.randrange(256) for _ in range(length)]
    return Sequence(seq_id, ids, SamplingParams(max_new_tokens=max_new_tokens, **params), 0.0, 0.0)


_REFERENCE: dict[tuple, list[int]] = {}


def hf_tokens(loaded: LoadedModel, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Greedy tokens of plain HF forwards over the whole sequence (no cache, no batch); memoised."""
    key = (id(loaded), tuple(prompt_ids))
    if len(_REFERENCE.get(key, ())) < num_tokens:
        ids = list(prompt_ids)
        with torch.inference_mode():
            for _ in range(num_tokens):
                ids.append(int(loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        _REFERENCE[key] = ids[len(prompt_ids) :]
    return _REFERENCE[key][:num_tokens]


class Driver:
    """Joins, decode steps (rows in any order) and leaves on a runner; each sequence's tokens."""

    def __init__(self, runner: LlamaRunner) -> None:
        self.runner, self.tokens = runner, {}

    def join(self, *seqs: Sequence) -> None:
        for s, token in zip(seqs, self.runner.prefill(list(seqs)), strict=True):
            self.tokens[s.seq_id] = [token]

    def decode(self, num_steps: int = 1, reverse: bool = False) -> None:
        for _ in range(num_steps):
            rows = list(reversed(self.runner.rows)) if reverse else list(self.runner.rows)
            for s, token in zip(rows, self.runner.decode(rows), strict=True):
                self.tokens[s.seq_id].append(token)

    def leave(self, *seqs: Sequence) -> None:
        self.runner.release(list(seqs))

    def check(self, loaded: LoadedModel, seqs: list[Sequence]) -> None:
        for s in seqs:
            got = self.tokens[s.seq_id]
            assert got == hf_tokens(loaded, s.prompt_ids, len(got)), f"sequence {s.seq_id} diverged"


def test_builtins_take_the_lean_path(tiny: LoadedModel) -> None:
    assert isinstance(ModelRunner(tiny), LlamaRunner)
    assert isinstance(ModelRunner(tiny, is_lean=False), HFRunner)


def test_compiling_the_hf_forward_on_a_cpu_is_refused_in_one_line(tiny: LoadedModel) -> None:
    from engine.runner import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="compile-decode off"):
        HFRunner(tiny, compile_backend="inductor")


def test_a_batch_of_mixed_lengths_equals_the_hf_forward(tiny: LoadedModel) -> None:
    driver = Driver(LlamaRunner(tiny))
    seqs = [seq(10, 5), seq(11, 23), seq(12, 11), seq(13, 1), seq(14, 40), seq(15, 4)]
    driver.join(*seqs)
    driver.decode(12)
    driver.check(tiny, seqs)


@pytest.mark.parametrize("num_rows", [1, 2, 3])  # 1 and 2 rows take the transposed weights on CPU
def test_small_batches_equal_the_hf_forward(tiny: LoadedModel, num_rows: int) -> None:
    driver = Driver(LlamaRunner(tiny))
    seqs = [seq(20 + i, 7 + 5 * i) for i in range(num_rows)]
    driver.join(*seqs)
    driver.decode(10)
    driver.check(tiny, seqs)


def test_joins_and_leaves_mid_stream_equal_the_hf_forward(tiny: LoadedModel) -> None:
    driver = Driver(LlamaRunner(tiny))
    a, b, c, d, e, f = seq(30, 7), seq(31, 30), seq(32, 3), seq(33, 2), seq(34, 12), seq(35, 50)
    driver.join(a)
    driver.decode(3)
    driver.join(b, c)  # longer and shorter than the running row
    driver.decode(4, reverse=True)  # rows in any order map back by identity
    driver.leave(a)  # slot 0 freed: the next joiner takes it
    driver.decode(2)
    driver.join(d)
    driver.decode(3)
    driver.leave(c, seq(99, 3))  # unknown sequences are ignored
    driver.join(e, f)  # one fills the free slot, one needs a new one
    driver.decode(5)
    driver.leave(b, d, e, f)
    assert driver.runner.num_rows == 0
    driver.join(seq(36, 9))  # emptied, then refilled
    driver.decode(2)
    driver.check(tiny, [a, b, c, d, e, f, seq(36, 9)])


def test_rows_left_alone_at_high_slots_equal_the_hf_forward(tiny: LoadedModel, ops: str) -> None:
    # Two rows at slots 3 and 4 of 5: SDPA copies their K/V out instead of spanning 5 rows; the
    # kernel reads each row in its own slot, over its own length, with no mask.
    driver = Driver(LlamaRunner(tiny))
    seqs = [seq(140 + i, 4 + 3 * i) for i in range(5)]
    driver.join(*seqs)
    driver.decode(2)
    driver.leave(*seqs[:3])
    step = driver.runner._inputs(list(driver.runner.rows), [])
    assert step.is_gathered and step.num_view_rows == 5
    if ops == "torch":
        assert step.decode_mask is not None and step.token_lengths is None
    else:
        # each row's prompt, its 2 decoded tokens and the new one
        assert step.decode_mask is None and step.token_lengths.tolist() == [13 + 3, 16 + 3]
    driver.decode(6)
    driver.leave(seqs[3])  # one row at slot 4
    driver.decode(3)
    driver.check(tiny, seqs)


def test_long_rows_attended_alone_equal_the_hf_forward(tiny: LoadedModel, ops: str) -> None:
    # One row of 300 tokens among rows of 4-9: with SDPA the batch attends over the short rows'
    # width and the long row alone over its own (engine/attention_split.py), the kernel each row
    # over its own length; then a free slot below the highest live row, then few rows left at
    # high slots (the gathered path), the long row still among them.
    driver = Driver(LlamaRunner(tiny))
    short = [seq(150 + i, 4 + i) for i in range(6)]
    long = seq(160, 300, max_new_tokens=16)
    driver.join(short[0], long, *short[1:])
    step = driver.runner._inputs(list(driver.runner.rows), [])
    if ops == "torch":
        assert [(r.slot, r.length) for r in step.long_rows] == [(1, 301)] and step.decode_len < 20
    else:
        assert not step.long_rows and step.token_lengths.tolist()[:2] == [5, 301]
    driver.decode(3)
    driver.leave(short[0])  # slot 0 free below the long row's
    assert driver.runner._inputs(list(driver.runner.rows), []).decode_rows is not None
    driver.decode(3)
    driver.leave(*short[1:4])
    step = driver.runner._inputs(list(driver.runner.rows), [])
    assert step.is_gathered and (bool(step.long_rows) == (ops == "torch"))
    driver.decode(3)
    driver.check(tiny, [long, *short])


def test_a_decode_step_writes_in_place_and_a_leave_moves_no_cache(tiny: LoadedModel) -> None:
    runner = LlamaRunner(tiny)
    a, b, c = seq(40, 9), seq(41, 5), seq(42, 6)
    runner.prefill([a, b])
    keys = list(runner.cache.keys)
    slots = dict(runner.cache.slot_of)
    runner.decode([a, b])
    runner.release([a])
    runner.decode([b])
    runner.prefill([c])  # fits the freed slot and the capacity
    runner.decode([b, c])
    assert all(x is y for x, y in zip(runner.cache.keys, keys, strict=True))
    assert runner.cache.slot_of[id(b)] == slots[id(b)] and runner.cache.slot_of[id(c)] == slots[id(a)]


@pytest.mark.parametrize("budget", [3, 8, 20])
def test_chunked_prefill_equals_the_hf_forward(tiny: LoadedModel, budget: int) -> None:
    config = SchedulerConfig(max_batch_size=3, max_num_batched_tokens=budget)
    core = EngineCore(Scheduler(config, kv_budget_tokens=4096), LlamaRunner(tiny), StepClock(), None)
    lengths, outputs = [5, 17, 9, 30, 2, 12, 7], [6, 2, 9, 4, 11, 3, 5]
    seqs = [seq(50 + i, n, m) for i, (n, m) in enumerate(zip(lengths, outputs, strict=True))]
    for s in seqs:
        core.add(s)
    while core.scheduler.has_work:
        core.step()
    assert "mixed" in {step.phase for step in core.steps}
    assert max(step.num_tokens for step in core.steps) <= budget
    assert core.executor.num_rows == 0 and core.executor.cache.num_live == 0
    for s, m in zip(seqs, outputs, strict=True):
        assert s.output_ids == hf_tokens(tiny, s.prompt_ids, m) and s.finish_reason == "length"


@pytest.mark.parametrize("policy", ["continuous", "static"])
def test_engine_core_and_scheduler_drive_the_lean_runner(tiny: LoadedModel, policy: str) -> None:
    scheduler = Scheduler(SchedulerConfig(policy=policy, max_batch_size=3), kv_budget_tokens=4096)
    core = EngineCore(scheduler, LlamaRunner(tiny), StepClock(), eos_token_id=None)
    seqs = [seq(60 + i, n, m) for i, (n, m) in enumerate([(5, 6), (17, 2), (9, 9), (30, 4), (2, 11)])]
    for s in seqs:
        core.add(s)
    while scheduler.has_work:
        core.step()
    for s in seqs:
        assert s.output_ids == hf_tokens(tiny, s.prompt_ids, s.params.max_new_tokens)


def test_a_request_cancelled_mid_prefill_frees_its_slot(tiny: LoadedModel) -> None:
    config = SchedulerConfig(max_batch_size=2, max_num_batched_tokens=4)
    core = EngineCore(Scheduler(config, kv_budget_tokens=4096), LlamaRunner(tiny), StepClock(), None)
    long_ = seq(70, 30, 3)
    core.add(long_)
    core.step()  # its first 4 prompt tokens
    assert core.executor.cache.num_live == 1
    core.fail([long_], "cancelled", "cancelled")
    assert core.executor.cache.num_live == 0 and not core.scheduler.has_work


def test_bad_plans_are_refused_and_leave_the_batch_intact(tiny: LoadedModel) -> None:
    runner, a, b = LlamaRunner(tiny), seq(80, 5), seq(81, 6)
    runner.prefill([a, b])
    with pytest.raises(ValueError, match="running rows"):
        runner.decode([a, seq(82, 3)])
    with pytest.raises(ValueError, match="running rows"):
        runner.decode([a, a])
    with pytest.raises(ValueError, match="already in the batch"):
        runner.prefill([a])
    with pytest.raises(ValueError, match="empty prompt"):
        runner.prefill([Sequence(83, [], SamplingParams(), 0.0, 0.0)])
    with pytest.raises(ValueError, match="supports"):
        runner.prefill([seq(84, 5, max_new_tokens=tiny.max_context_tokens)])
    assert runner.num_rows == 2 and runner.cache.num_live == 2
    assert len(runner.decode([b, a])) == 2


def test_seeded_sampling_is_reproducible_in_any_batch(tiny: LoadedModel) -> None:
    def sampled(seq_id: int, length: int, **params) -> Sequence:
        return seq(seq_id, length, temperature=params.pop("temperature", 1.0), **params)

    alone = Driver(LlamaRunner(tiny))
    alone.join(sampled(90, 11, top_p=0.9, seed=123))
    alone.decode(15)
    mixed = Driver(LlamaRunner(tiny))
    greedy = seq(91, 20)
    mixed.join(greedy)
    mixed.decode(2)
    mixed.join(sampled(90, 11, top_p=0.9, seed=123), sampled(92, 4, seed=7), sampled(93, 8))
    mixed.decode(15)
    assert mixed.tokens[90] == alone.tokens[90]
    mixed.check(tiny, [greedy])
    assert all(0 <= t < tiny.model.config.vocab_size for t in mixed.tokens[93])


def family_model(family: str) -> LoadedModel:
    """A random two-layer model of another Llama-family shape, built from its config (no download)."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")  # fmt: skip
    if family == "qwen2":  # biases on q, k and v
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **shape))
    else:  # a sliding window shorter than the test's sequences: the HF path
        model = MistralForCausalLM(MistralConfig(sliding_window=8, **shape))
    init_random_weights(model, seed=0)
    with torch.no_grad():  # non-zero biases, so a dropped bias would show
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    return LoadedModel(model.eval(), None, family, torch.device("cpu"), torch.float32,
                       eos_token_id=None, pad_token_id=0, max_context_tokens=1024,
                       num_params=0, kv_bytes_per_token=0)  # fmt: skip


@pytest.mark.parametrize("family", ["qwen2", "mistral", "mistral-sliding-window"])
def test_other_families_equal_the_hf_forward_on_their_path(family: str) -> None:
    loaded = family_model(family)
    runner = ModelRunner(loaded)
    assert isinstance(runner, HFRunner if family.endswith("window") else LlamaRunner)
    if family.endswith("window"):
        assert "sliding" in lean_unsupported_reason(loaded.model)
        return  # tests/engine/test_runner.py drives the HF path
    driver, (a, b, c) = Driver(runner), (seq(120, 5), seq(121, 17), seq(122, 11))
    driver.join(a, b)
    driver.decode(3)
    driver.join(c)
    driver.decode(4)
    driver.leave(b)
    driver.decode(6)
    driver.check(loaded, [a, b, c])


def test_the_hf_model_shares_the_fused_weights(tiny: LoadedModel) -> None:
    layer = LlamaRunner(tiny).model.layers[0]
    attn = tiny.model.model.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == layer.qkv.weight.data_ptr()  # a view, not a copy


def test_the_lean_loop_counts_tokens_and_time(tiny: LoadedModel) -> None:
    prompts = [seq(i, 12).prompt_ids for i in range(3)]
    num_tokens, seconds = lean_decode_loop(tiny, prompts, 5)
    assert num_tokens == 15 and seconds > 0
    with pytest.raises(ValueError, match="one length"):
        lean_decode_loop(tiny, [prompts[0], prompts[1][:4]], 2)


class StepClock:
    """A virtual clock: one tick per read."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def now(self) -> float:
        self.now_s += 0.001
        return self.now_s
