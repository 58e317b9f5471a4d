"""Model loading: the built-in Llamas, the byte tokenizer, device/dtype resolution, load errors."""

from __future__ import annotations

import mmap
import os

import pytest
import torch

from engine.config import ConfigError, EngineConfig
from engine.models import (
    BUILTIN_VOCAB_SIZE,
    LoadedModel,
    ModelLoadError,
    kv_budget_tokens,
    load_model,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
)

pytestmark = pytest.mark.slow  # loads the built-in models


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(EngineConfig(model="builtin:tiny", device="cpu"))


def test_tiny_loads_with_its_facts(tiny: LoadedModel) -> None:
    assert 2_000_000 <= tiny.num_params <= 5_000_000
    assert not tiny.model.training
    assert (tiny.device, tiny.dtype) == (torch.device("cpu"), torch.float32)
    assert tiny.max_context_tokens >= 4096
    assert tiny.eos_token_id is not None and tiny.pad_token_id not in (None, tiny.eos_token_id)
    # 2 (k, v) * 4 layers * 2 kv heads * 64 head dim * 4 bytes
    assert tiny.kv_bytes_per_token == 2 * 4 * 2 * 64 * 4
    assert tiny.device_name


def test_small_loads_in_its_size_range() -> None:
    small = load_model(EngineConfig(model="builtin:small", device="cpu"))
    assert 20_000_000 <= small.num_params <= 30_000_000


def test_weights_depend_on_the_seed_only(tiny: LoadedModel) -> None:
    torch.manual_seed(1234)  # the global RNG state must not matter
    again = load_model(EngineConfig(model="builtin:tiny", device="cpu"))
    other = load_model(EngineConfig(model="builtin:tiny", device="cpu", seed=1))
    weights, same, different = (m.model.state_dict() for m in (tiny, again, other))
    assert all(torch.equal(weights[k], same[k]) for k in weights)
    assert not torch.equal(weights["lm_head.weight"], different["lm_head.weight"])


def test_greedy_logits_have_clear_margins(tiny: LoadedModel) -> None:
    # Flat logits would let padding noise flip argmax (flaky equivalence) and loop on one token.
    ids = torch.tensor([tiny.encode("The quick brown fox jumps over the lazy dog.")])
    with torch.inference_mode():
        logits = tiny.model(input_ids=ids).logits[0]  # [L, V]
    top2 = logits.topk(2, dim=-1).values
    assert float((top2[:, 0] - top2[:, 1]).median()) > 0.3
    assert len(set(logits.argmax(-1).tolist())) > ids.shape[1] // 3


@pytest.mark.parametrize(
    "text", ["", "hello", "héllo wörld", "emoji 🚀✓ and 中文, tabs\tnewlines\n", "\x00\x7f\xff"]
)
def test_byte_tokenizer_round_trips_any_text(tiny: LoadedModel, text: str) -> None:
    ids = tiny.encode(text)
    assert ids[0] == tiny.tokenizer.bos_token_id
    assert len(ids) == 1 + len(text.encode("utf-8"))
    assert all(0 <= i < BUILTIN_VOCAB_SIZE for i in ids)
    assert tiny.decode(ids) == text


def test_a_saved_builtin_loads_from_its_directory(tiny: LoadedModel, tmp_path) -> None:
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    local = load_model(EngineConfig(model=str(tmp_path), device="cpu"))
    ids = torch.tensor([tiny.encode("same weights?")])
    with torch.inference_mode():
        assert torch.allclose(local.model(input_ids=ids).logits, tiny.model(input_ids=ids).logits)
    assert (local.eos_token_id, local.pad_token_id) == (tiny.eos_token_id, tiny.pad_token_id)
    assert local.decode(local.encode("round trip ✓")) == "round trip ✓"


@pytest.mark.parametrize("name", ["foo/bar-unknown", "builtin:huge", "./no/such/dir"])
def test_an_unloadable_model_is_one_clear_line(name: str, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests
    with pytest.raises(ModelLoadError) as err:
        load_model(EngineConfig(model=name, device="cpu"))
    message = str(err.value)
    assert repr(name) in message and "builtin:tiny" in message and "\n" not in message
    assert err.value.__cause__ is None


def test_a_directory_without_a_model_is_a_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not a loadable causal LM"):
        load_model(EngineConfig(model=str(tmp_path), device="cpu"))


def test_device_and_dtype_resolution() -> None:
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    has_mps = torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", cpu) == resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("float8", cpu)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is unavailable"):
            resolve_device("cuda")


def test_explicit_dtype_is_applied() -> None:
    loaded = load_model(EngineConfig(model="builtin:tiny", device="cpu", dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.kv_bytes_per_token == 2 * 4 * 2 * 64 * 2


def test_kv_budget_follows_the_setting_or_the_cpu_gigabytes(tiny: LoadedModel) -> None:
    assert kv_budget_tokens(tiny, EngineConfig(kv_budget_tokens=1234)) == 1234
    one_gib = kv_budget_tokens(tiny, EngineConfig(cpu_kv_cache_gb=1.0))
    half_gib = kv_budget_tokens(tiny, EngineConfig(cpu_kv_cache_gb=0.5))
    assert 0 < half_gib <= one_gib <= 2**30 // tiny.kv_bytes_per_token


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_peak_memory_on_cpu_is_the_process_peak_rss() -> None:
    cpu = torch.device("cpu")
    honoured = reset_peak_memory(cpu)
    rss_before = _rss_mb()
    # A fresh anonymous mapping, every page touched: new resident pages, whatever malloc kept.
    block = mmap.mmap(-1, 128 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    rss_with_block = _rss_mb()
    assert rss_with_block >= rss_before + 100
    block.close()
    peak = peak_memory_mb(cpu)
    if honoured:  # the peak since the reset saw the block, now gone
        assert peak is not None and peak >= rss_with_block - 1
        assert reset_peak_memory(cpu) and peak_memory_mb(cpu) < rss_with_block - 64
    else:  # a lifetime peak must not pass for this trial's
        assert peak is None


def test_an_ignored_cpu_reset_gives_no_peak_rather_than_the_lifetime_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.models as models

    cpu = torch.device("cpu")
    # A sandbox that accepts the clear_refs write but keeps the old high-water mark.
    monkeypatch.setattr(models, "_proc_status_kib",
                        lambda keys: {"VmHWM:": 2_000_000, "VmRSS:": 500_000})
    assert reset_peak_memory(cpu) is False
    assert peak_memory_mb(cpu) is None
    monkeypatch.undo()
    if os.path.exists("/proc/self/clear_refs"):  # a later honoured reset tracks again
        assert reset_peak_memory(cpu) is True and peak_memory_mb(cpu) > 0
