"""A lean forward for the Llama family (Llama, Qwen2, Mistral shapes), over a slot KV cache.

The Hugging Face module stays the reference and keeps its weights: this forward reads the same
tensors (q/k/v and gate/up fused into one matmul each, the HF parameters re-pointed at views
of the fused tensors, so no weight is held twice). One forward runs one packed step: the
decode rows' tokens first (one each), then each prompt chunk's tokens, T in all; matmuls run
over all T tokens at once, attention per kind (decode rows batched, each chunk on its own) or,
on the C kernels (engine/cpu_kernels.py), every token over its own context in one call.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.cpu_kernels import CpuKernels, cpu_kernels

LEAN_MODEL_TYPES = ("llama", "qwen2", "mistral")
# On CPU each weight gets copies laid out for the matmul kernels. A step of at most
# SMALL_BATCH_ROWS rows multiplies by a transposed ([in, out]) copy: MKL runs x @ W_t ~30% faster
# than x @ W.T for one or two rows. Larger steps run on oneDNN's packed ("reordered") layout where
# torch has oneDNN, as vLLM's CPU build does. builtin:small, 1 thread, decode step time, packed
# vs transposed/F.linear in one process: 10.2 vs 8.3 ms at 1 row, 11.8 vs 11.4 at 2, 10.3 vs 15.7
# at 4, 17.1 vs 23.7 at 16; prefill-sized matmuls (64-256 rows) ~1.15x.
SMALL_BATCH_ROWS = 2
MAX_COPY_BYTES = 2**30  # the copies (up to three) quadruple the weights' memory: small models only
PACK_ROWS_HINT = 16  # the batch size oneDNN's layout is chosen for (any batch size runs on it)
# Decode attention reads a view of slots [0, highest live + 1); when it would span more than
# this many times the decode rows (long rows left alone at high slots), copying the rows' K/V
# out is cheaper than attending over the free slots (builtin:small, 2 rows of 600 tokens at
# slots 5 and 12: ~26 ms steps against ~15 ms for 2 rows at slots 0 and 1).
GATHER_FACTOR = 2
# Rope variants whose inverse frequencies are fixed at load time (dynamic ones change with length).
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class ChunkSpan:
    """One prompt chunk of a step: tokens [start, start + num_tokens) of the sequence in `slot`."""

    slot: int
    start: int
    num_tokens: int
    mask: torch.Tensor | None  # [n * G, start + n] bool (query rows token-major, G per token)


@dataclass(frozen=True)
class LongRow:
    """A decode row whose context outruns the batch's (see engine/attention_split.py): the
    batched attention sees only its first `decode_len` columns; it is attended alone over all."""

    index: int  # its place among the step's decode rows
    slot: int
    length: int  # its context, its new token included


@dataclass(frozen=True)
class StepInputs:
    """One packed forward: decode rows first, then prompt chunks (see the module doc)."""

    ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T] cache row of each token
    num_decode: int  # B: the first B tokens are one per decode row, in slot order
    num_view_rows: int  # decode attention runs over cache rows [0, num_view_rows)
    decode_rows: torch.Tensor | None  # [B] slot of each decode row; None when they are 0..B-1
    decode_mask: torch.Tensor | None  # [num_view_rows, 1, 1, S] additive (0 or -inf); None: all valid
    decode_len: int  # S: longest decode row's context, its new token included
    chunks: tuple[ChunkSpan, ...]
    logit_index: torch.Tensor | None  # [R] tokens whose logits are wanted; None = every token
    is_small: bool = False  # T <= SMALL_BATCH_ROWS: the transposed weights (a flag, not a shape
    # test, so a compiled step holds no guard on its batch size)
    is_gathered: bool = False  # decode attention over the rows' K/V copied out (few rows, many
    # free slots below the highest: see GATHER_FACTOR), not over the view of every slot
    long_rows: tuple[LongRow, ...] = ()  # decode rows longer than decode_len: attended alone
    # [T] each token's context, itself included: set when the C kernels run the step
    # (engine/cpu_kernels.py): attention takes every token over exactly its own slot's tokens,
    # decode rows and prompt chunks alike, so masks, the long-row split and the gathered path
    # go unused; RMSNorm, SiLU-and-multiply, and rope with the K/V write run in one pass each
    token_lengths: torch.Tensor | None = None


def lean_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the lean forward cannot run `model` exactly (None: it can)."""
    config = model.config
    if config.model_type not in LEAN_MODEL_TYPES:
        return f"model type {config.model_type!r} (lean path: {', '.join(LEAN_MODEL_TYPES)})"
    if config.hidden_act != "silu":
        return f"activation {config.hidden_act!r}"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    if config.model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return "sliding-window attention"
    rope = getattr(model.model, "rotary_emb", None)
    if rope is None or getattr(rope, "rope_type", None) not in STATIC_ROPE_TYPES:
        return f"rope type {getattr(rope, 'rope_type', None)!r}"
    return None


_LEAN: weakref.WeakKeyDictionary[torch.nn.Module, LeanLlama] = weakref.WeakKeyDictionary()


def lean_model(hf_model: torch.nn.Module) -> LeanLlama:
    """The lean forward of `hf_model`, built once per model (runners and the raw loop share it)."""
    if hf_model not in _LEAN:
        _LEAN[hf_model] = LeanLlama(hf_model).eval()
    return _LEAN[hf_model]


class LlamaLayer(torch.nn.Module):
    """One decoder layer's weights; the forward is `LeanLlama.forward` (no per-layer call overhead)."""

    def __init__(self, hf_layer: torch.nn.Module, has_copy: bool, kernels: CpuKernels | None) -> None:
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.qkv = Linear(fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj),
                          fuse_biases(attn.q_proj, attn.k_proj, attn.v_proj), has_copy, kernels)
        self.o = Linear(attn.o_proj.weight, attn.o_proj.bias, has_copy, kernels)
        self.gate_up = Linear(fuse_linears(mlp.gate_proj, mlp.up_proj),
                              fuse_biases(mlp.gate_proj, mlp.up_proj), has_copy, kernels)
        self.down = Linear(mlp.down_proj.weight, mlp.down_proj.bias, has_copy, kernels)
        self.input_norm = hf_layer.input_layernorm.weight
        self.post_norm = hf_layer.post_attention_layernorm.weight


class Linear(torch.nn.Module):
    """y = x W^T + b, on copies of W laid out for the CPU's matmul kernels where there is room
    (see MAX_COPY_BYTES): panels for the C kernel (engine/kernels/matmul.c), which a step on
    the C kernels takes at any row count; for torch's ops, transposed for small batches and
    oneDNN's packed layout for the rest."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, has_copy: bool,
                 kernels: CpuKernels | None = None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias  # [out, in], [out]
        # The transposed copy wins only in float32 (MKL's sgemm); in bfloat16 oneDNN's packed
        # layout is faster at every row count (1 row: ~75 vs ~160 us for builtin:small's
        # gate_up, 2 rows: ~120 vs ~540 us; AVX512-BF16 machine, 1 thread).
        small_copy = has_copy and weight.dtype == torch.float32
        self.weight_t = weight.detach().t().contiguous() if small_copy else None  # [in, out]
        self.packed = pack_weight(weight) if has_copy else None  # oneDNN layout, opaque
        self.panels = kernels.pack(weight) if small_copy and kernels is not None else None

    def forward(self, x: torch.Tensor, is_small: bool, kernels: CpuKernels | None = None) -> torch.Tensor:
        """`kernels`: the step runs on the C kernels (then so does this matmul, where packed)."""
        if kernels is not None and self.panels is not None:
            return kernels.linear(x, self.panels, self.bias, self.weight.shape[0])
        if self.weight_t is not None and is_small:
            y = x @ self.weight_t
            return y if self.bias is None else y + self.bias
        if self.packed is not None and not torch.compiler.is_compiling():  # inductor: its own kernels
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """W [out, in] reordered for oneDNN's matmul, or None where torch has no oneDNN for it (not
    a CPU, a dtype it lacks, a build without it): a probe checks the packed product against
    F.linear's, so a kernel that runs but disagrees is never used."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)
        probe = torch.linspace(-1, 1, 3 * weight.shape[1], dtype=weight.dtype).view(3, -1)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):  # no such op, or none for this dtype
        return None
    want = F.linear(probe, weight.detach())
    tolerance = 1e-4 if weight.dtype == torch.float32 else 5e-2
    return packed if torch.allclose(got, want, rtol=tolerance, atol=tolerance) else None


class LeanLlama(torch.nn.Module):
    """The forward of a loaded Hugging Face Llama-family model, on its own weights."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        reason = lean_unsupported_reason(hf_model)
        if reason is not None:
            raise ValueError(f"no lean forward for this model: {reason}")
        config = hf_model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        inner = hf_model.model
        self.embed = inner.embed_tokens.weight
        weight_bytes = sum(p.numel() * p.element_size() for p in inner.layers.parameters())
        has_copy = self.embed.device.type == "cpu" and weight_bytes <= MAX_COPY_BYTES
        is_cpu_fp32 = self.embed.device.type == "cpu" and self.embed.dtype == torch.float32
        self.kernels = cpu_kernels() if is_cpu_fp32 else None
        self.layers = torch.nn.ModuleList(LlamaLayer(layer, has_copy, self.kernels) for layer in inner.layers)
        self.norm = inner.norm.weight
        self.lm_head = Linear(hf_model.lm_head.weight, None, has_copy, self.kernels)
        self.inv_freq = inner.rotary_emb.inv_freq  # [D / 2] float32
        self.rope_scaling = float(inner.rotary_emb.attention_scaling)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def uses_kernels(self) -> bool:
        """Whether an eager step runs on the C kernels: they run on one core, so with more torch
        threads torch's ops (which spread rows and heads over them) run instead."""
        return self.kernels is not None and torch.get_num_threads() == 1

    def forward(self, step: StepInputs, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """Logits of the wanted tokens [R, V]; writes every token's K/V into its slot, in place."""
        kernels = self.kernels if step.token_lengths is not None else None
        ops, small = kernels or TORCH_OPS, step.is_small
        x = F.embedding(step.ids, self.embed)  # [T, hidden]
        cos, sin = self.rope(step.positions, x.dtype)  # [T, 1, D]
        for layer, k_cache, v_cache in zip(self.layers, keys, values, strict=True):
            # k_cache, v_cache: [num_slots, Hkv, capacity, D]
            h = ops.rms_norm(x, layer.input_norm, self.eps)
            qkv = layer.qkv(h, small, kernels)  # [T, (H + 2 Hkv) D]
            q = ops.rope_write(qkv, cos, sin, k_cache, v_cache, step.slots, step.positions, self.num_heads)
            x = x + layer.o(self.attend(q, k_cache, v_cache, step), small, kernels)
            h = ops.rms_norm(x, layer.post_norm, self.eps)
            x = x + layer.down(ops.silu_mul(layer.gate_up(h, small, kernels)), small, kernels)
        if step.logit_index is not None:
            x = x.index_select(0, step.logit_index)
        return self.lm_head(ops.rms_norm(x, self.norm, self.eps), len(x) <= SMALL_BATCH_ROWS, kernels)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, D] as the HF rotary embedding computes them (fp32, then the model dtype)."""
        freqs = positions[:, None].float() * self.inv_freq  # [T, D / 2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return (emb.cos() * self.rope_scaling).to(dtype), (emb.sin() * self.rope_scaling).to(dtype)

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               step: StepInputs) -> torch.Tensor:
        """Attention output [T, H * D] for the step's decode rows and chunks."""
        if step.token_lengths is not None:  # the C kernel: each token over its own context
            return self.kernels.attention(q, k_cache, v_cache, step.slots, step.token_lengths)
        outs = []
        if step.num_decode:
            outs.append(self.decode_attention(q[: step.num_decode], k_cache, v_cache, step))
        offset = step.num_decode
        for chunk in step.chunks:
            end = chunk.start + chunk.num_tokens
            keys = k_cache[chunk.slot : chunk.slot + 1, :, :end]  # [1, Hkv, start + n, D]
            values = v_cache[chunk.slot : chunk.slot + 1, :, :end]
            outs.append(self.grouped(q[offset : offset + chunk.num_tokens], keys, values, chunk.mask))
            offset += chunk.num_tokens
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         step: StepInputs) -> torch.Tensor:
        # One query per row, so a KV head's G query heads are its G "query positions": GQA with
        # no K/V expansion, and the same padding mask for all of them. Rows are cache slots, so
        # the keys are a view of the cache: no gather.
        num_rows, group = step.num_view_rows, self.num_heads // self.num_kv_heads
        q = q.view(-1, self.num_kv_heads, group, self.head_dim)  # [B, Hkv, G, D]
        if step.is_gathered:
            keys = k_cache.narrow(2, 0, step.decode_len).index_select(0, step.decode_rows)
            values = v_cache.narrow(2, 0, step.decode_len).index_select(0, step.decode_rows)
            mask = None if step.decode_mask is None else step.decode_mask.index_select(0, step.decode_rows)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, Hkv, G, D]
            return self.attend_long_rows(out, q, k_cache, v_cache, step)
        view_q = q
        if step.decode_rows is not None:  # free slots below the highest: zero queries, dropped after
            view_q = q.new_zeros(num_rows, *q.shape[1:]).index_copy_(0, step.decode_rows, q)
        keys = k_cache.narrow(0, 0, num_rows).narrow(2, 0, step.decode_len)  # [rows, Hkv, S, D]
        values = v_cache.narrow(0, 0, num_rows).narrow(2, 0, step.decode_len)
        out = F.scaled_dot_product_attention(view_q, keys, values, attn_mask=step.decode_mask)
        if step.decode_rows is not None:
            out = out.index_select(0, step.decode_rows)
        return self.attend_long_rows(out, q, k_cache, v_cache, step)

    def attend_long_rows(self, out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor,
                         v_cache: torch.Tensor, step: StepInputs) -> torch.Tensor:
        """`out` [B, Hkv, G, D] with each long row's attention redone over its whole context (q:
        [B, Hkv, G, D] in decode order; a view of its slot, no mask), as [B, H * D]."""
        for row in step.long_rows:
            keys = k_cache[row.slot : row.slot + 1, :, : row.length]  # [1, Hkv, length, D]
            values = v_cache[row.slot : row.slot + 1, :, : row.length]
            out[row.index : row.index + 1] = F.scaled_dot_product_attention(
                q[row.index : row.index + 1], keys, values)
        return out.reshape(-1, self.num_heads * self.head_dim)

    def grouped(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """One sequence's chunk: q [n, H, D] over its cached keys [1, Hkv, S, D] -> [n, H * D]."""
        num_tokens, group = len(q), self.num_heads // self.num_kv_heads
        # [n, Hkv, G, D] -> [1, Hkv, n * G, D]: the G heads sharing a KV head as extra query rows
        q = q.view(num_tokens, self.num_kv_heads, group, self.head_dim).transpose(0, 1)
        q = q.reshape(1, self.num_kv_heads, num_tokens * group, self.head_dim)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.view(self.num_kv_heads, num_tokens, group, self.head_dim).transpose(0, 1)
        return out.reshape(num_tokens, self.num_heads * self.head_dim)


def chunk_mask(start: int, num_tokens: int, group: int, device: torch.device) -> torch.Tensor:
    """Causal mask of a chunk over its whole context: [n * G, start + n], query i sees keys <= start + i."""
    keys = torch.arange(start + num_tokens, device=device)
    queries = torch.arange(start, start + num_tokens, device=device).repeat_interleave(group)
    return keys[None, :] <= queries[:, None]


class TorchOps:
    """The forward's elementwise ops in torch: the reference for engine/cpu_kernels.py's, and
    what runs without them (and under torch.compile)."""

    @staticmethod
    def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm(x, weight, eps)

    @staticmethod
    def rope_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
                   num_heads: int) -> torch.Tensor:
        """q [T, H, D] rotated; the step's rotated k and its v written into their slots in place."""
        num_tokens, head_dim, num_kv_heads = len(qkv), cos.shape[-1], k_cache.shape[1]
        num_qk = (num_heads + num_kv_heads) * head_dim
        qk = rotate(qkv[:, :num_qk].view(num_tokens, -1, head_dim), cos, sin)
        q, k = qk.split([num_heads, num_kv_heads], dim=1)  # [T, H, D], [T, Hkv, D]
        k_cache[slots, :, positions] = k
        v_cache[slots, :, positions] = qkv[:, num_qk:].view(num_tokens, num_kv_heads, head_dim)
        return q

    @staticmethod
    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        """SwiGLU's hidden from the fused gate/up output [T, 2I]: silu(gate) * up, [T, I]."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


TORCH_OPS = TorchOps()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's RMSNorm: normalised in fp32, scaled in the model dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [T, heads, D] (HF's rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


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
