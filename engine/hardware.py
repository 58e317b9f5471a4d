"""Device peak figures for the roofline: a datasheet table for common GPUs, a short cached probe
on CPUs, and a loaded model's shape."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from common import paths
from engine.cpu_kernels import CpuKernels, cpu_kernels
from engine.models import LoadedModel, device_name
from engine.roofline import DevicePeaks, ModelShape

GB, TFLOPS = 1e9, 1e12
# Datasheet peaks, dense (no sparsity): (name fragment, bandwidth GB/s, bf16/fp16 TFLOPS, fp32
# TFLOPS). fp32 is the CUDA-core rate: PyTorch does not use TF32 for matmuls by default. The
# first fragment found in torch.cuda.get_device_name() wins, so specific names come first.
GPU_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 4800, 989, 67),
    ("H100 PCIe", 2000, 756, 51),
    ("H100 NVL", 3900, 835, 60),
    ("H100", 3350, 989, 67),  # SXM
    ("A100 80GB PCIe", 1935, 312, 19.5),
    ("A100-SXM4-80GB", 2039, 312, 19.5),
    ("A100", 1555, 312, 19.5),  # 40 GB, SXM or PCIe
    ("L40S", 864, 362, 91.6),
    ("L4", 300, 121, 30.3),
    ("A10G", 600, 70, 31.2),  # AWS's A10 variant; bf16 figure as commonly cited, approximate
    ("A10", 600, 125, 31.2),
    ("RTX 4090", 1008, 165, 82.6),
    ("V100", 900, 125, 15.7),
    ("T4", 320, 65, 8.1),
)
PROBE_BYTES = 64 * 2**20
PROBE_MATMUL_SIZE = 1024
PROBE_REPEATS = 5


def gpu_peaks(name: str, dtype: torch.dtype) -> DevicePeaks | None:
    """Datasheet peaks for a GPU name like `NVIDIA H100 80GB HBM3`; None if not in the table."""
    for fragment, bandwidth_gb_s, half_tflops, fp32_tflops in GPU_PEAKS:
        if fragment.lower() in name.lower():
            tflops = fp32_tflops if dtype == torch.float32 else half_tflops
            return DevicePeaks(name, bandwidth_gb_s * GB, tflops * TFLOPS, "table")
    return None


def device_peaks(device: torch.device, dtype: torch.dtype) -> DevicePeaks | None:
    """Peaks of this device: the table on CUDA, a cached probe on CPU; None when unknown."""
    if device.type == "cuda":
        return gpu_peaks(device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peaks(dtype)
    return None


def cpu_peaks(dtype: torch.dtype, cache_dir: Path | None = None) -> DevicePeaks:
    """Measured copy bandwidth and matmul rate of this CPU, probed once (<1 s) and cached."""
    name = device_name(torch.device("cpu"))
    # On the C kernels (float32, one thread) the engine's matmuls are its own, so the peak is the
    # faster of the two: a fraction over torch's rate alone could read above 1.
    kernels = cpu_kernels() if dtype == torch.float32 and torch.get_num_threads() == 1 else None
    key = f"{name}|threads={torch.get_num_threads()}|{dtype}" + ("|c-kernels" if kernels else "")
    path = (cache_dir or paths.cache_dir()) / "cpu_peaks.json"
    cached = _read_json(path)
    if key not in cached:
        bandwidth_bytes_s = probe_bandwidth()
        flops_s = max(probe_matmul(dtype), probe_kernel_matmul(kernels) if kernels else 0.0)
        cached[key] = {"bandwidth_bytes_s": bandwidth_bytes_s, "flops_s": flops_s}
        _write_json(path, cached)
    entry = cached[key]
    return DevicePeaks(name, entry["bandwidth_bytes_s"], entry["flops_s"], "measured")


def probe_bandwidth(num_bytes: int = PROBE_BYTES) -> float:
    """Best copy rate (bytes read + written per second) over a buffer far larger than caches."""
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    best_s = min(_timed(lambda: dst.copy_(src)) for _ in range(PROBE_REPEATS))
    return 2 * num_bytes / best_s


def probe_matmul(dtype: torch.dtype, size: int = PROBE_MATMUL_SIZE) -> float:
    """Best square-matmul FLOP rate in `dtype` (the CPU's practical compute peak)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm-up: kernel selection and thread start
    best_s = min(_timed(lambda: a @ b) for _ in range(PROBE_REPEATS))
    return 2 * size**3 / best_s


def probe_kernel_matmul(kernels: CpuKernels, size: int = PROBE_MATMUL_SIZE) -> float:
    """Best square-matmul FLOP rate of the C kernels' float32 matmul (engine/kernels/matmul.c)."""
    a, panels = torch.randn(size, size), kernels.pack(torch.randn(size, size))
    kernels.linear(a, panels, None, size)  # warm-up
    best_s = min(_timed(lambda: kernels.linear(a, panels, None, size)) for _ in range(PROBE_REPEATS))
    return 2 * size**3 / best_s


def model_shape(loaded: LoadedModel) -> ModelShape:
    """What the model's forward reads and computes, from its parameters and config."""
    model = loaded.model
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    is_tied = head is not None and head.weight is embedding
    params = [p for p in model.parameters() if not (p is embedding and not is_tied)]
    config = model.config.get_text_config()
    num_heads = config.num_attention_heads
    return ModelShape(
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        matmul_params=sum(p.numel() for p in params if p.ndim >= 2),
        kv_bytes_per_token=loaded.kv_bytes_per_token,
        num_layers=config.num_hidden_layers,
        num_heads=num_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // num_heads,
    )


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return max(time.perf_counter() - start, 1e-9)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: probe again next time
