"""The lean forward's matmuls (engine/llama.py): weights laid out for the CPU's kernels, and the
elementwise work that follows a matmul run inside it.

On CPU each weight gets copies laid out for the matmul kernels. A step of at most
SMALL_BATCH_ROWS rows (engine/llama.py) multiplies by a transposed ([in, out]) copy: MKL runs
x @ W_t ~30% faster than x @ W.T for one or two rows. Larger steps run on oneDNN's packed
("reordered") layout where torch has oneDNN, as vLLM's CPU build does. builtin:small, 1 thread,
decode step time, packed vs transposed/F.linear in one process: 10.2 vs 8.3 ms at 1 row, 11.8
vs 11.4 at 2, 10.3 vs 15.7 at 4, 17.1 vs 23.7 at 16; prefill-sized matmuls (64-256 rows) ~1.15x.

On the packed layout the residual adds and the MLP's SiLU and product are oneDNN post-ops of
the matmuls (`Linear.add_to`, `GatedMLP`): the matmul writes its result once, already
activated, multiplied or added, instead of elementwise passes over it afterwards. builtin:small's
MLP with its residual add, 1 thread: 0.94 vs 1.16 ms a layer at 16 rows, 4.2 vs 4.4 ms at 80.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

MAX_COPY_BYTES = 2**30  # the copies triple the weights' memory: small models only
PACK_ROWS_HINT = 16  # the batch size oneDNN's layout is chosen for (any batch size runs on it)


def _linear_pointwise():  # looked up per call: absent in torch builds without oneDNN
    return torch.ops.mkldnn._linear_pointwise


class Linear(torch.nn.Module):
    """y = x W^T + b, on copies of W laid out for the CPU's matmul kernels where there is room
    (see MAX_COPY_BYTES): transposed for small batches, oneDNN's packed layout for the rest."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, has_copy: bool,
                 pack: bool = True) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias  # [out, in], [out]
        # The transposed copy wins only in float32 (MKL's sgemm); in bfloat16 oneDNN's packed
        # layout is faster at every row count (1 row: ~75 vs ~160 us for builtin:small's
        # gate_up, 2 rows: ~120 vs ~540 us; AVX512-BF16 machine, 1 thread).
        small_copy = has_copy and weight.dtype == torch.float32
        self.weight_t = weight.detach().t().contiguous() if small_copy else None  # [in, out]
        self.packed = pack_weight(weight) if has_copy and pack else None  # oneDNN layout, opaque

    def is_packed_for(self, is_small: bool) -> bool:
        """Whether a step of this size runs on the packed copy (eagerly: inductor has its own kernels)."""
        return (self.packed is not None and not (is_small and self.weight_t is not None)
                and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor, is_small: bool) -> torch.Tensor:
        if self.weight_t is not None and is_small:
            y = x @ self.weight_t
            return y if self.bias is None else y + self.bias
        if self.is_packed_for(is_small):
            return _linear_pointwise()(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor, is_small: bool) -> torch.Tensor:
        """residual + x W^T + b: on the packed copy the add is the matmul's post-op."""
        if self.is_packed_for(is_small) and has_post_ops(x.dtype):
            return _linear_pointwise().binary(x, residual, self.packed, self.bias, "add")
        return residual + self(x, is_small)


class GatedMLP(torch.nn.Module):
    """The Llama MLP and its residual add: residual + down(silu(gate(h)) * up(h)).

    Eagerly on the packed layout: gate and up are packed apart, SiLU is the gate matmul's
    post-op, the product the up matmul's, the residual add the down matmul's. Elsewhere (small
    float32 steps on the transposed copy, no oneDNN, under torch.compile) one fused gate_up
    matmul and elementwise ops."""

    def __init__(self, hf_mlp: torch.nn.Module, has_copy: bool) -> None:
        super().__init__()
        gate, up = hf_mlp.gate_proj, hf_mlp.up_proj
        fused = fuse_linears(gate, up)
        self.num_gate = gate.weight.shape[0]
        self.gate_bias, self.up_bias = gate.bias, up.bias
        split = [pack_weight(w) for w in (gate.weight, up.weight)] if has_copy else [None, None]
        self.gate_packed, self.up_packed = (
            split if None not in split and has_post_ops(fused.dtype) else (None, None))
        # The split copies replace the fused one's packed copy: no weight is packed twice.
        self.gate_up = Linear(fused, fuse_biases(gate, up), has_copy, pack=self.gate_packed is None)
        self.down = Linear(hf_mlp.down_proj.weight, hf_mlp.down_proj.bias, has_copy)

    def forward(self, h: torch.Tensor, residual: torch.Tensor, is_small: bool) -> torch.Tensor:
        small_copy = is_small and self.gate_up.weight_t is not None
        if self.gate_packed is not None and not small_copy and not torch.compiler.is_compiling():
            linear = _linear_pointwise()
            gated = linear(h, self.gate_packed, self.gate_bias, "swish", [], "")  # swish = SiLU
            product = linear.binary(h, gated, self.up_packed, self.up_bias, "mul")
            return self.down.add_to(product, residual, is_small)
        gate, up = self.gate_up(h, is_small).split(self.num_gate, dim=-1)
        return self.down.add_to(F.silu(gate) * up, residual, is_small)


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """W [out, in] reordered for oneDNN's matmul, or None where torch has no oneDNN for it (not
    a CPU, a dtype it lacks, a build without it): a probe checks the packed product against
    F.linear's, so a kernel that runs but disagrees is never used."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)
        probe = torch.linspace(-1, 1, 3 * weight.shape[1], dtype=weight.dtype).view(3, -1)
        got = _linear_pointwise()(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):  # no such op, or none for this dtype
        return None
    want = F.linear(probe, weight.detach())
    return packed if torch.allclose(got, want, **_tolerance(weight.dtype)) else None


@functools.cache
def has_post_ops(dtype: torch.dtype) -> bool:
    """Whether oneDNN's SiLU, product and add post-ops run here in `dtype` and compute what the
    separate ops compute (a probe, once per dtype): otherwise the matmuls run without them."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 16, generator=gen).to(dtype)
    x, other = torch.randn(5, 16, generator=gen).to(dtype), torch.randn(5, 8, generator=gen).to(dtype)
    packed = pack_weight(weight)
    if packed is None:
        return False
    linear = _linear_pointwise()
    try:
        got = [linear(x, packed, None, "swish", [], ""),
               linear.binary(x, other, packed, None, "mul"), linear.binary(x, other, packed, None, "add")]
    except (RuntimeError, AttributeError):
        return False
    plain = F.linear(x, weight)
    want = [F.silu(plain), plain * other, plain + other]
    return all(torch.allclose(g, w, **_tolerance(dtype)) for g, w in zip(got, want, strict=True))


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    return {"rtol": tol, "atol": tol}


def fuse_linears(*linears: torch.nn.Linear) -> torch.nn.Parameter:
    """One weight [sum out, in] for several linears; each HF weight becomes a view of it."""
    fused = torch.nn.Parameter(torch.cat([m.weight.detach() for m in linears]), requires_grad=False)
    offset = 0
    for m in linears:  # shared storage: the HF reference and this forward read the same tensor
        rows = m.weight.shape[0]
        m.weight.data = fused.data[offset : offset + rows]
        offset += rows
    return fused


def fuse_biases(*linears: torch.nn.Linear) -> torch.nn.Parameter | None:
    """The fused bias, or None when the linears have none (Llama, Mistral); zeros for a missing one."""
    if all(m.bias is None for m in linears):
        return None
    parts = [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.weight.shape[0])
             for m in linears]
    fused = torch.nn.Parameter(torch.cat(parts), requires_grad=False)
    offset = 0
    for m in linears:
        rows = m.weight.shape[0]
        if m.bias is not None:
            m.bias.data = fused.data[offset : offset + rows]
        offset += rows
    return fused
