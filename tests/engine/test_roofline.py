"""Roofline arithmetic on known shapes, the GPU table, the cached CPU probe, a model's shape."""

from __future__ import annotations

import json

import pytest
import torch

from engine import hardware
from engine.config import EngineConfig
from engine.core import StepRecord
from engine.cpu_kernels import cpu_kernels
from engine.hardware import gpu_peaks, model_shape
from engine.models import load_model
from engine.roofline import DevicePeaks, ModelShape, roofline_fractions, step_bound_s, step_bytes, step_flops

# A Llama-2-7B-like shape in bf16: 7e9 matmul parameters, MHA 32 x 128 over 32 layers, so one
# token's K and V are 2 x 32 x 32 x 128 x 2 bytes = 524,288 bytes.
LLAMA_7B = ModelShape(weight_bytes=14_000_000_000, matmul_params=7_000_000_000,
                      kv_bytes_per_token=524_288, num_layers=32, num_heads=32, head_dim=128)
ROUND = DevicePeaks("round", bandwidth_bytes_s=2e12, flops_s=1e15, source="table")


def decode_step(duration_s: float, num_rows: int, context: int) -> StepRecord:
    return StepRecord(0.0, duration_s, "decode", num_rows, num_rows, num_rows * context, num_rows * context)


def prefill_step(duration_s: float, length: int) -> StepRecord:
    return StepRecord(0.0, duration_s, "prefill", 1, length, length * (length + 1) // 2, length)


def test_decode_is_bound_by_reading_weights_and_kv():
    # 8 rows of 1,000 tokens: 14e9 + 524,288 x 8,000 = 18.194304e9 bytes -> 9.097152 ms at 2 TB/s;
    # compute is 2 x 7e9 x 8 + 4 x 32 x 32 x 128 x 8,000 = 116.19e9 FLOPs -> 0.116 ms.
    step = decode_step(0.018194304, 8, 1000)
    assert step_bytes(LLAMA_7B, step) == 18_194_304_000
    assert step_flops(LLAMA_7B, step) == 116_194_304_000
    assert step_bound_s(LLAMA_7B, ROUND, step) == pytest.approx(0.009097152)
    assert roofline_fractions(LLAMA_7B, ROUND, [step]) == (pytest.approx(0.5), None)


def test_prefill_is_bound_by_compute():
    # 4,096 tokens: 2 x 7e9 x 4,096 = 57.344e12 matmul FLOPs plus 524,288 per causal pair
    # (4,096 x 4,097 / 2 = 8,390,656 pairs) = 61.743e12 FLOPs -> 61.743 ms at 1 PFLOP/s;
    # its bytes (weights + 4,096 tokens of KV = 16.15e9) take only 8.07 ms.
    bound_s = (57_344_000_000_000 + 524_288 * 8_390_656) / 1e15
    step = prefill_step(2 * bound_s, 4096)
    assert step_bound_s(LLAMA_7B, ROUND, step) == pytest.approx(bound_s)
    assert roofline_fractions(LLAMA_7B, ROUND, [step]) == (None, pytest.approx(0.5))


def test_fraction_weights_steps_by_time_and_ignores_mixed_ones():
    # bounds 9.097 ms each; measured 18.19 ms and 9.097 ms: 2 x 9.097 / 27.29 = 2/3.
    a, b = decode_step(0.018194304, 8, 1000), decode_step(0.009097152, 8, 1000)
    mixed = StepRecord(0.0, 1.0, "mixed", 8, 100, 10_000, 10_000)
    decode, prefill = roofline_fractions(LLAMA_7B, ROUND, [a, b, mixed])
    assert decode == pytest.approx(2 / 3) and prefill is None


@pytest.mark.parametrize("name, dtype, expected", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, (3350e9, 989e12)),
    ("NVIDIA H100 PCIe", torch.bfloat16, (2000e9, 756e12)),
    ("NVIDIA H200", torch.float16, (4800e9, 989e12)),
    ("NVIDIA A100-SXM4-80GB", torch.float32, (2039e9, 19.5e12)),
    ("NVIDIA A100-SXM4-40GB", torch.bfloat16, (1555e9, 312e12)),
    ("NVIDIA L40S", torch.bfloat16, (864e9, 362e12)),
    ("NVIDIA L4", torch.bfloat16, (300e9, 121e12)),
    ("NVIDIA A10G", torch.bfloat16, (600e9, 70e12)),
])
def test_gpu_table_picks_the_most_specific_name(name: str, dtype: torch.dtype, expected: tuple):
    peaks = gpu_peaks(name, dtype)
    assert (peaks.bandwidth_bytes_s, peaks.flops_s) == pytest.approx(expected) and peaks.source == "table"


def test_unknown_gpu_has_no_peaks():
    assert gpu_peaks("Some Future Accelerator", torch.bfloat16) is None


@pytest.fixture()
def two_threads():
    num_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(num_threads)


def test_cpu_probe_runs_once_and_is_cached(tmp_path, monkeypatch, two_threads):
    calls = []
    monkeypatch.setattr(hardware, "probe_bandwidth", lambda: calls.append("bw") or 20e9)
    monkeypatch.setattr(hardware, "probe_matmul", lambda dtype: calls.append("mm") or 100e9)
    first = hardware.cpu_peaks(torch.float32, cache_dir=tmp_path)
    second = hardware.cpu_peaks(torch.float32, cache_dir=tmp_path)
    assert calls == ["bw", "mm"] and first == second  # 2 threads: torch's matmul, not the kernels
    assert (first.bandwidth_bytes_s, first.flops_s, first.source) == (20e9, 100e9, "measured")
    assert (tmp_path / "cpu_peaks.json").exists()


@pytest.mark.skipif(cpu_kernels() is None, reason="no C compiler here: the kernels cannot be built")
def test_on_the_c_kernels_the_peak_is_the_faster_matmul(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the kernels' condition
    monkeypatch.setattr(hardware, "probe_bandwidth", lambda: 20e9)
    monkeypatch.setattr(hardware, "probe_matmul", lambda dtype: 100e9)
    monkeypatch.setattr(hardware, "probe_kernel_matmul", lambda kernels: 120e9)
    assert hardware.cpu_peaks(torch.float32, cache_dir=tmp_path).flops_s == 120e9
    monkeypatch.setattr(hardware, "probe_kernel_matmul", lambda kernels: 80e9)  # a fresh cache
    assert hardware.cpu_peaks(torch.float32, cache_dir=tmp_path / "b").flops_s == 100e9
    assert "|c-kernels" in next(iter(json.loads((tmp_path / "cpu_peaks.json").read_text())))


def test_cpu_probes_measure_something_positive():
    assert hardware.probe_bandwidth(1 << 20) > 0 and hardware.probe_matmul(torch.float32, 64) > 0
    if cpu_kernels() is not None:
        assert hardware.probe_kernel_matmul(cpu_kernels(), 64) > 0


@pytest.mark.slow
def test_model_shape_of_builtin_tiny():
    # hidden 256, MLP 768, 4 layers, 4 heads (2 KV) of 64, vocab 259, untied: per layer
    # q,o 256x256, k,v 256x128, MLP 3 x 256x768 = 786,432 matmul params; plus lm_head 259x256.
    # The input embedding is not read by a step; norms (2 x 256 per layer + 256) are.
    shape = model_shape(load_model(EngineConfig(model="builtin:tiny", device="cpu")))
    assert shape.matmul_params == 4 * 786_432 + 259 * 256
    assert shape.weight_bytes == 4 * (4 * 786_432 + 259 * 256 + 4 * 512 + 256)
    assert (shape.kv_bytes_per_token, shape.num_layers, shape.num_heads, shape.head_dim) == (4096, 4, 4, 64)
