"""One-process A/B of a step's matmuls: the C panel kernel against torch's two CPU paths.

    .venv/bin/python scripts/matmul_ab.py [--rows 1,2,4,8,16,64,1024] [--rounds 7]

builtin:small's linear layers as one step runs them (8 layers of qkv [768, 512], o [512, 512],
gate_up [3072, 512], down [512, 1536]; random weights, so all 96 MB stream from memory as a
step's do), on one thread: x @ W_t (MKL, the torch path's copy for 1-2 rows), oneDNN's packed
layout (the torch path's for more), and engine/kernels/matmul.c on its panels. Each round runs
every variant in turn; prints the median per row count (ms per step's matmuls). Results are
checked against each other first. docs/benchmarks.md ("Linear layers in C") has the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cpu_kernels import cpu_kernels  # noqa: E402

SHAPES = [(768, 512), (512, 512), (3072, 512), (512, 1536)] * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8,16,64,1024")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kernels = cpu_kernels()
    if kernels is None:
        sys.exit("matmul_ab: the C kernels could not be built here (no compiler?); nothing to compare")
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen) for n, k in SHAPES]
    transposed = [w.t().contiguous() for w in weights]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in weights]
    panels = [kernels.pack(w) for w in weights]
    variants = {
        "x @ W_t (MKL)": lambda x, i: x @ transposed[i],
        "oneDNN packed": lambda x, i: torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], ""),
        "C panels": lambda x, i: kernels.linear(x, panels[i], None, SHAPES[i][0]),
    }
    for num_rows in map(int, args.rows.split(",")):
        xs = [torch.randn(num_rows, k, generator=gen) for _, k in SHAPES]
        for i in range(4):
            want = xs[i] @ transposed[i]
            for run in variants.values():
                torch.testing.assert_close(run(xs[i], i), want, rtol=1e-4, atol=1e-3)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                for i in range(len(SHAPES)):
                    run(xs[i], i)
                times[name].append((time.perf_counter() - start) * 1e3)
        print(f"{num_rows:>5} rows: " + ", ".join(f"{name} {statistics.median(t):.2f} ms"
                                                  for name, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
