"""CPU kernels in C, built on first use with the system's C compiler and loaded with ctypes.

For a float32 step on one CPU thread (engine/llama.py): attention with one query token per row
(engine/kernels/attention.c), for a step's decode rows and prompt tokens alike, about twice as
fast as torch's SDPA for decode's short queries and 1.5-5x for prompt chunks; RMSNorm,
SiLU-and-multiply, and rope with the K/V cache write, in one pass each
(engine/kernels/elementwise.c); the linear layers, on weights packed in panels at load
(engine/kernels/matmul.c), 1.1-1.4x oneDNN's sgemm at 1-1,024 rows. A build is ~0.5 s and is
cached per source, compiler flags and CPU in ~/.cache/tradeoff/kernels/; without a compiler, or
with TRADEOFF_CPU_KERNELS=0, nothing is built and the lean forward keeps torch's ops (the
reference these kernels are tested against). No torch headers: the kernels read raw float
pointers, so they build in well under a second and need no matching torch build.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from common import paths

log = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).parent / "kernels" / name
                for name in ("attention.c", "elementwise.c", "matmul.c"))
# -ffast-math only compiles (reassociated sums, vector expf); the link leaves it out, since
# linking it into a shared library sets flush-to-zero for the whole process on load.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-c")
LINK_FLAGS = ("-shared",)
ENV_SWITCH = "TRADEOFF_CPU_KERNELS"  # "0": build nothing, use torch's kernels
PANEL_COLUMNS = 16  # matmul.c's NR: output columns per packed panel
_P, _I = ctypes.c_void_p, ctypes.c_int64


class CpuKernels:
    """The kernels, float32 on CPU; each runs on one core."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.attention_fn = _declare(library.token_attention, [_P, _I, _P, _P, _P, _P, _P, _I, _I, _I,
                                                               _I, _I, _I, ctypes.c_float, _P])
        self.rms_norm_fn = _declare(library.rms_norm, [_P, _I, _P, _P, _I, _I, ctypes.c_float])
        self.silu_mul_fn = _declare(library.silu_mul, [_P, _P, _I, _I])
        self.rope_write_fn = _declare(library.rope_write, [_P, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I,
                                                           _I, _I, _I])
        self.pack_fn = _declare(library.pack_panels, [_P, _P, _I, _I])
        self.matmul_fn = _declare(library.panel_matmul, [_P, _I, _P, _P, _P, _I, _I, _I])

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """W [N, K] float32 in `linear`'s layout: panels of PANEL_COLUMNS output columns."""
        assert weight.dtype == torch.float32 and weight.dim() == 2
        weight = weight.detach().contiguous()
        num_out, num_in = weight.shape
        panels = weight.new_empty(panels_size(num_out, num_in))
        self.pack_fn(weight.data_ptr(), panels.data_ptr(), num_out, num_in)
        return panels

    def linear(self, x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None,
               num_out: int) -> torch.Tensor:
        """x [T, K] (rows may be strided) W^T + bias, W packed by `pack` with `num_out` rows: [T, N]."""
        assert x.stride(1) == 1 and x.dtype == torch.float32 and (bias is None or bias.is_contiguous())
        num_in = x.shape[1]
        assert panels.numel() == panels_size(num_out, num_in)
        out = x.new_empty(x.shape[0], num_out)
        bias_ptr = None if bias is None else bias.data_ptr()
        self.matmul_fn(x.data_ptr(), x.stride(0), panels.data_ptr(), bias_ptr, out.data_ptr(), x.shape[0],
                       num_out, num_in)
        return out

    def attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slots: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """q [T, H, D] (rows may be strided, heads contiguous); caches [slots, Hkv, capacity,
        D] contiguous; slots, lengths [T] int64: token t attends to the first lengths[t] tokens
        of its slot (a decode row: its whole context; a prompt token: causally, up to itself;
        the caller keeps each within the capacity). Returns [T, H * D]."""
        num_rows, num_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[1]
        assert q.stride(2) == 1 and q.stride(1) == head_dim and k_cache.is_contiguous()
        assert v_cache.is_contiguous() and slots.dtype == lengths.dtype == torch.int64
        out = q.new_empty(num_rows, num_heads * head_dim)
        group = num_heads // num_kv_heads
        scratch = q.new_empty(group * k_cache.shape[2])  # a row's scores, at most capacity
        self.attention_fn(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
                          out.data_ptr(), slots.data_ptr(), lengths.data_ptr(), num_rows,
                          num_kv_heads, group, head_dim, k_cache.stride(0), k_cache.stride(1),
                          1 / math.sqrt(head_dim), scratch.data_ptr())
        return out

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """HF's RMSNorm of x [T, N] (rows may be strided) by weight [N]: [T, N]."""
        assert x.stride(1) == 1 and weight.is_contiguous() and x.dtype == weight.dtype == torch.float32
        out = x.new_empty(x.shape)
        self.rms_norm_fn(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(), x.shape[0],
                         x.shape[1], eps)
        return out

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up from the fused [T, 2I] gate/up output: [T, I]."""
        assert gate_up.is_contiguous() and gate_up.dtype == torch.float32
        num_rows, width = gate_up.shape
        out = gate_up.new_empty(num_rows, width // 2)
        self.silu_mul_fn(gate_up.data_ptr(), out.data_ptr(), num_rows, width // 2)
        return out

    def rope_write(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                   num_heads: int) -> torch.Tensor:
        """Rope on qkv [T, (H + 2 Hkv) D]'s q and k (cos, sin [T, 1, D]); k and v written into the
        caches at each token's slot and position (the caller keeps them in range). Returns q
        [T, H, D], rotated."""
        num_tokens, head_dim = qkv.shape[0], cos.shape[-1]
        num_kv_heads = k_cache.shape[1]
        assert qkv.is_contiguous() and cos.is_contiguous() and sin.is_contiguous()
        assert k_cache.is_contiguous() and v_cache.is_contiguous() and k_cache.stride() == v_cache.stride()
        assert qkv.shape[1] == (num_heads + 2 * num_kv_heads) * head_dim and slots.dtype == torch.int64
        q = qkv.new_empty(num_tokens, num_heads, head_dim)
        self.rope_write_fn(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr(),
                           k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), positions.data_ptr(),
                           num_tokens, num_heads, num_kv_heads, head_dim, k_cache.stride(0),
                           k_cache.stride(1))
        return q


def panels_size(num_out: int, num_in: int) -> int:
    """Floats in W [num_out, num_in]'s packed panels: the last panel zero-padded to full width."""
    return -(-num_out // PANEL_COLUMNS) * PANEL_COLUMNS * num_in


def _declare(fn, argtypes: list) -> object:
    fn.argtypes, fn.restype = argtypes, None
    return fn


_LOADED: dict[str, CpuKernels | None] = {}


def cpu_kernels(cache_dir: Path | None = None) -> CpuKernels | None:
    """The kernels, built once per process (and cached on disk); None where they cannot be."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    if "kernels" not in _LOADED:
        _LOADED["kernels"] = build_kernels(cache_dir or paths.cache_dir())
    return _LOADED["kernels"]


def build_kernels(cache_dir: Path) -> CpuKernels | None:
    """Build (or reuse from `cache_dir`) and load the kernels; None, with the reason logged,
    where they cannot be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        log.info("no C compiler (or not Linux): the lean forward runs on torch's ops only")
        return None
    source = b"".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(b"|".join([source, " ".join(COMPILE_FLAGS + LINK_FLAGS).encode(),
                                    compiler.encode(), _cpu_signature().encode()])).hexdigest()[:16]
    library = cache_dir / "kernels" / f"kernels-{key}.so"
    try:
        if not library.exists():
            _compile(compiler, library)
        return CpuKernels(ctypes.CDLL(str(library)))
    except (OSError, subprocess.SubprocessError) as exc:  # failed, timed out, or not loadable
        said = getattr(exc, "stderr", None) or b""
        log.warning("CPU kernels not built (%s%s): torch's ops run instead", exc,
                    f": {said.decode(errors='replace').strip()[:300]}" if said else "")
        return None


def _compile(compiler: str, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        objects = [Path(tmp) / f"{source.stem}.o" for source in SOURCES]
        for source, obj in zip(SOURCES, objects, strict=True):
            subprocess.run([compiler, *COMPILE_FLAGS, str(source), "-o", str(obj)], check=True,
                           capture_output=True, timeout=120)
        built = Path(tmp) / library.name
        subprocess.run([compiler, *LINK_FLAGS, *map(str, objects), "-o", str(built), "-lm"],
                       check=True, capture_output=True, timeout=120)
        built.replace(library)  # atomic: a concurrent process sees the whole file or none


def _cpu_signature() -> str:
    """-march=native builds for this CPU: its model and flags key the cached library."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))
