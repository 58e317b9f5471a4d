"""CPU kernels in C, built on first use with the system's C compiler and loaded with ctypes.

One kernel so far: attention with one query token per row (engine/kernels/attention.c), for a
step's decode rows and prompt tokens alike, about twice as fast as torch's SDPA for decode's
short queries and 1.5-5x for prompt chunks (docs/benchmarks.md). A build is ~0.3 s and is cached
per source, compiler flags and CPU in ~/.cache/tradeoff/kernels/; without a compiler, or with
TRADEOFF_CPU_KERNELS=0, nothing is built and the lean forward keeps torch's SDPA (the
reference these kernels are tested against). No torch headers: the kernel reads raw float
pointers, so it builds in well under a second and needs no matching torch build.
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

SOURCE = Path(__file__).parent / "kernels" / "attention.c"
# -ffast-math only compiles (reassociated sums, vector expf); the link leaves it out, since
# linking it into a shared library sets flush-to-zero for the whole process on load.
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC", "-c")
LINK_FLAGS = ("-shared",)
ENV_SWITCH = "TRADEOFF_CPU_KERNELS"  # "0": build nothing, use torch's kernels
_P, _I = ctypes.c_void_p, ctypes.c_int64


class TokenAttention:
    """The attention kernel: float32 on CPU, one token per row; it runs on one core."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.fn = library.token_attention
        self.fn.argtypes = [_P, _I, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, ctypes.c_float, _P]
        self.fn.restype = None

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slots: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """q [T, H, D] (rows may be strided, heads contiguous); caches [slots, Hkv, capacity,
        D] contiguous; slots, lengths [T] int64: token t attends to the first lengths[t] tokens
        of its slot (a decode row: its whole context; a prompt token: causally, up to itself).
        Returns [T, H * D]."""
        num_rows, num_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[1]
        assert q.stride(2) == 1 and q.stride(1) == head_dim and k_cache.is_contiguous()
        assert v_cache.is_contiguous() and slots.dtype == lengths.dtype == torch.int64
        out = q.new_empty(num_rows, num_heads * head_dim)
        group = num_heads // num_kv_heads
        scratch = q.new_empty(group * k_cache.shape[2])  # a row's scores, at most capacity
        self.fn(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
                slots.data_ptr(), lengths.data_ptr(), num_rows, num_kv_heads, group, head_dim,
                k_cache.stride(0), k_cache.stride(1), 1 / math.sqrt(head_dim), scratch.data_ptr())
        return out


_LOADED: dict[str, TokenAttention | None] = {}


def attention_kernel(cache_dir: Path | None = None) -> TokenAttention | None:
    """The kernel, built once per process (and cached on disk); None where it cannot be."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    if "attention" not in _LOADED:
        _LOADED["attention"] = build_attention(cache_dir or paths.cache_dir())
    return _LOADED["attention"]


def build_attention(cache_dir: Path) -> TokenAttention | None:
    """Build (or reuse from `cache_dir`) and load the kernel; None, with the reason logged, where
    it cannot be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        log.info("no C compiler (or not Linux): attention runs on torch's SDPA")
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"|".join([source, " ".join(COMPILE_FLAGS + LINK_FLAGS).encode(),
                                    compiler.encode(), _cpu_signature().encode()])).hexdigest()[:16]
    library = cache_dir / "kernels" / f"attention-{key}.so"
    try:
        if not library.exists():
            _compile(compiler, library)
        return TokenAttention(ctypes.CDLL(str(library)))
    except (OSError, subprocess.CalledProcessError) as exc:
        log.warning("attention kernel not built (%s): torch's SDPA runs instead", exc)
        return None


def _compile(compiler: str, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        obj, built = Path(tmp) / "kernel.o", Path(tmp) / library.name
        subprocess.run([compiler, *COMPILE_FLAGS, str(SOURCE), "-o", str(obj)], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([compiler, *LINK_FLAGS, str(obj), "-o", str(built), "-lm"], check=True,
                       capture_output=True, timeout=120)
        built.replace(library)  # atomic: a concurrent process sees the whole file or none


def _cpu_signature() -> str:
    """-march=native builds for this CPU: its model and flags key the cached library."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))
