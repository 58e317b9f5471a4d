"""The C kernels against torch's ops, and how they are built, cached and refused."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from engine.cpu_kernels import ENV_SWITCH, build_kernels, cpu_kernels
from engine.llama import TORCH_OPS, Linear, chunk_mask

kernels = cpu_kernels()
needs_kernels = pytest.mark.skipif(kernels is None, reason="no C compiler here: the kernels cannot be built")


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: list[int],
              lengths: list[int]) -> torch.Tensor:
    """Each row alone through SDPA over its slot's first `length` tokens, GQA by repeated heads."""
    group = q.shape[1] // keys.shape[1]
    outs = []
    for row, (slot, length) in enumerate(zip(slots, lengths, strict=True)):
        k = keys[slot, :, :length].repeat_interleave(group, dim=0)  # [H, L, D]
        v = values[slot, :, :length].repeat_interleave(group, dim=0)
        outs.append(F.scaled_dot_product_attention(q[row][:, None], k, v)[:, 0].reshape(-1))
    return torch.stack(outs)


@needs_kernels
@pytest.mark.parametrize(("num_kv_heads", "group", "head_dim"),
                         [(2, 4, 64), (4, 3, 128), (1, 1, 32), (3, 2, 80)])  # 64, 128: unrolled
def test_each_row_attends_over_exactly_its_own_slot_and_length(num_kv_heads, group, head_dim) -> None:
    gen = torch.Generator().manual_seed(head_dim)
    num_slots, capacity = 7, 96
    keys = torch.randn(num_slots, num_kv_heads, capacity, head_dim, generator=gen)
    values = torch.randn(num_slots, num_kv_heads, capacity, head_dim, generator=gen)
    slots, lengths = [5, 0, 3, 6], [1, 96, 17, 40]  # any slots, in any order; a 1-token context
    heads = num_kv_heads * group
    # The forward's q: rows of a wider [T, H + Hkv, D] tensor (rows strided, heads contiguous).
    qk = torch.randn(len(slots), heads + num_kv_heads, head_dim, generator=gen)
    q = qk[:, :heads]
    got = kernels.attention(q, keys, values, torch.tensor(slots), torch.tensor(lengths))
    want = reference(q, keys, values, slots, lengths)
    assert got.shape == (len(slots), heads * head_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("start", [0, 37])  # a first chunk, and one after cached or earlier tokens
def test_a_prompt_chunk_attends_causally_as_sdpa_with_its_mask(start: int) -> None:
    gen = torch.Generator().manual_seed(start)
    num_kv_heads, group, head_dim, num_tokens = 2, 4, 64, 50
    keys = torch.randn(3, num_kv_heads, 128, head_dim, generator=gen)
    values = torch.randn(3, num_kv_heads, 128, head_dim, generator=gen)
    q = torch.randn(num_tokens, num_kv_heads * group, head_dim, generator=gen)
    positions = torch.arange(start, start + num_tokens)
    got = kernels.attention(q, keys, values, torch.full((num_tokens,), 2), positions + 1)
    # The SDPA path's way (LeanLlama.grouped): G heads as extra query rows, a causal mask.
    stacked = q.view(num_tokens, num_kv_heads, group, head_dim).transpose(0, 1)
    stacked = stacked.reshape(1, num_kv_heads, num_tokens * group, head_dim)
    end = start + num_tokens
    want = F.scaled_dot_product_attention(stacked, keys[2:3, :, :end], values[2:3, :, :end],
                                          attn_mask=chunk_mask(start, num_tokens, group, q.device))
    want = want.view(num_kv_heads, num_tokens, group, head_dim).transpose(0, 1).reshape(num_tokens, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_tokens_past_a_rows_length_are_never_read() -> None:
    keys, values = torch.randn(2, 1, 16, 64), torch.randn(2, 1, 16, 64)
    q = torch.randn(2, 4, 64)
    before = kernels.attention(q, keys, values, torch.tensor([1, 0]), torch.tensor([5, 9]))
    keys[1, :, 5:], values[0, :, 9:] = float("nan"), float("inf")  # beyond each row's context
    after = kernels.attention(q, keys, values, torch.tensor([1, 0]), torch.tensor([5, 9]))
    assert torch.equal(before, after)
    assert math.isfinite(after.abs().max().item())


@needs_kernels
def test_a_build_is_cached_per_source_and_reused(tmp_path) -> None:
    first = build_kernels(tmp_path)
    built = list((tmp_path / "kernels").glob("kernels-*.so"))
    assert first is not None and len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert build_kernels(tmp_path) is not None
    assert built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [built[0].name]  # no temp files left
    # Built with -ffast-math, linked without: loading it must not flush denormals process-wide.
    tiny = 1e-310
    assert tiny * 1.0 != 0.0 and torch.tensor([1e-39]).mul(1.0).item() != 0.0


def test_without_a_working_compiler_sdpa_stays(tmp_path, monkeypatch, caplog) -> None:
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    with caplog.at_level(logging.WARNING, logger="engine.cpu_kernels"):
        assert build_kernels(tmp_path) is None
    assert "torch's ops run instead" in caplog.text and "cc: broken" in caplog.text  # its reason
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_the_switch_turns_the_kernels_off(monkeypatch) -> None:
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert cpu_kernels() is None


@needs_kernels
def test_rms_norm_and_silu_mul_equal_torchs() -> None:
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(9, 700, generator=gen) * 3
    x, weight = wide[:, :512], torch.randn(512, generator=gen)  # rows strided, as after a select
    torch.testing.assert_close(kernels.rms_norm(x, weight, 1e-6), TORCH_OPS.rms_norm(x, weight, 1e-6),
                               rtol=1e-5, atol=1e-5)
    gate_up = torch.randn(9, 2 * 384, generator=gen) * 8  # large gates: exp over- and underflows
    gate_up[0, :3] = torch.tensor([-100.0, 100.0, 0.0])
    torch.testing.assert_close(kernels.silu_mul(gate_up), TORCH_OPS.silu_mul(gate_up), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_rope_write_rotates_q_and_k_and_writes_k_and_v_where_torchs_does() -> None:
    gen = torch.Generator().manual_seed(5)
    heads, kv_heads, head_dim, num_tokens = 6, 2, 64, 7
    qkv = torch.randn(num_tokens, (heads + 2 * kv_heads) * head_dim, generator=gen)
    angles = torch.randn(num_tokens, 1, head_dim, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    slots, positions = torch.tensor([3, 0, 0, 0, 2, 2, 1]), torch.tensor([9, 0, 1, 2, 40, 41, 5])
    caches = [torch.randn(4, kv_heads, 48, head_dim, generator=gen) for _ in range(2)]
    want_caches = [c.clone() for c in caches]
    got = kernels.rope_write(qkv, cos, sin, *caches, slots, positions, heads)
    want = TORCH_OPS.rope_write(qkv, cos, sin, *want_caches, slots, positions, heads)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for cache, want_cache in zip(caches, want_caches, strict=True):  # written there, nowhere else
        torch.testing.assert_close(cache, want_cache, rtol=1e-6, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("num_rows", [1, 2, 3, 5, 6, 7, 16, 97, 200])  # blocks of 1-6; past a 96-row chunk
@pytest.mark.parametrize(("num_out", "num_in", "has_bias"),
                         [(768, 512, False), (259, 37, True), (16, 1, True)])
def test_linear_on_packed_panels_equals_f_linear(num_rows, num_out, num_in, has_bias) -> None:
    gen = torch.Generator().manual_seed(num_rows * num_out + num_in)
    weight = torch.randn(num_out, num_in, generator=gen)
    bias = torch.randn(num_out, generator=gen) if has_bias else None
    wide = torch.randn(num_rows, num_in + 5, generator=gen)
    x = wide[:, 2 : 2 + num_in]  # rows strided, as a slice of a wider tensor
    panels = kernels.pack(weight)
    assert panels.numel() == -(-num_out // 16) * 16 * num_in  # 16-column panels, the last zero-padded
    got = kernels.linear(x, panels, bias, num_out)
    assert got.shape == (num_rows, num_out)
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)


@needs_kernels
def test_a_lean_linear_on_the_kernels_reads_its_panels_not_its_other_copies() -> None:
    gen = torch.Generator().manual_seed(11)
    layer = Linear(torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen), True, kernels)
    x = torch.randn(4, 32, generator=gen)
    want = F.linear(x, layer.weight, layer.bias)
    layer.weight_t, layer.packed = None, None  # the torch path's copies gone: F.linear on weight
    torch.testing.assert_close(layer(x, False, kernels), want, rtol=1e-5, atol=1e-5)
    layer.panels.zero_()  # the kernel path reads the panels: now only the bias is left
    torch.testing.assert_close(layer(x, False, kernels), layer.bias.expand(4, -1))
    torch.testing.assert_close(layer(x, False), want, rtol=1e-5, atol=1e-5)  # torch's ops: untouched
