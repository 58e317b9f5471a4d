"""engine/lean_linear.py: the oneDNN-packed copies compute what F.linear computes, at every
batch size (the layout is chosen for one; any must run on it), with and without a bias; the
post-ops (residual add, SiLU, product) compute what the separate ops compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.lean_linear import GatedMLP, Linear, has_post_ops, pack_weight

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")


@needs_onednn
@pytest.mark.parametrize("num_rows", [1, 2, 3, 16, 64, 300])
@pytest.mark.parametrize("has_bias", [False, True])
def test_packed_linear_equals_f_linear(num_rows: int, has_bias: bool) -> None:
    gen = torch.Generator().manual_seed(num_rows)
    weight = torch.randn(96, 64, generator=gen)
    bias = torch.randn(96, generator=gen) if has_bias else None
    linear = Linear(weight, bias, has_copy=True)
    assert linear.packed is not None and linear.weight_t is not None  # packed; transposed: <= 2 rows
    x = torch.randn(num_rows, 64, generator=gen)
    torch.testing.assert_close(linear(x, num_rows <= 2), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_bf16_packs_or_falls_back_and_agrees() -> None:
    weight = torch.randn(64, 32).to(torch.bfloat16)
    linear = Linear(weight, None, has_copy=True)
    x = torch.randn(5, 32).to(torch.bfloat16)
    # Packed where oneDNN has bf16 here, else F.linear: the product is F.linear's either way.
    # No transposed copy in bf16: the packed layout is faster at every row count there.
    assert linear.weight_t is None
    torch.testing.assert_close(linear(x, False), F.linear(x, weight), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(linear(x[:1], True), F.linear(x[:1], weight), rtol=2e-2, atol=2e-2)


def test_no_copy_means_plain_f_linear() -> None:
    weight = torch.randn(8, 4)
    linear = Linear(weight, None, has_copy=False)
    assert linear.packed is None and linear.weight_t is None
    x = torch.randn(3, 4)
    assert torch.equal(linear(x, True), F.linear(x, weight))


def test_meta_weights_are_not_packed() -> None:
    assert pack_weight(torch.empty(8, 4, device="meta")) is None


def mlp_of(hidden: int, inner: int, has_bias: bool, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    mlp = torch.nn.Module()
    for name, (out, inp) in {"gate_proj": (inner, hidden), "up_proj": (inner, hidden),
                             "down_proj": (hidden, inner)}.items():
        linear = torch.nn.Linear(inp, out, bias=has_bias)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(out, inp, generator=gen) / inp**0.5)
            if has_bias:
                linear.bias.copy_(torch.randn(out, generator=gen))
        setattr(mlp, name, linear)
    return mlp


@needs_onednn
@pytest.mark.parametrize("num_rows", [1, 2, 3, 16, 80])
@pytest.mark.parametrize("has_bias", [False, True])
def test_gated_mlp_with_post_ops_equals_the_separate_ops(num_rows: int, has_bias: bool) -> None:
    mlp = mlp_of(64, 96, has_bias, seed=num_rows)
    # The reference, from the HF-shaped module before GatedMLP re-points its weights.
    gen = torch.Generator().manual_seed(7)
    h, residual = torch.randn(num_rows, 64, generator=gen), torch.randn(num_rows, 64, generator=gen)
    want = residual + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
    gated = GatedMLP(mlp, has_copy=True)
    assert has_post_ops(torch.float32) and gated.gate_packed is not None
    assert gated.gate_up.packed is None  # the split copies replace the fused one's packed copy
    with torch.inference_mode():
        got = gated(h, residual, num_rows <= 2)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("num_rows", [1, 16])
def test_add_to_is_the_residual_plus_the_product(num_rows: int) -> None:
    gen = torch.Generator().manual_seed(num_rows)
    weight, bias = torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen)
    x, residual = torch.randn(num_rows, 32, generator=gen), torch.randn(num_rows, 48, generator=gen)
    linear = Linear(weight, bias, has_copy=True)
    torch.testing.assert_close(linear.add_to(x, residual, num_rows <= 2),
                               residual + F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_without_copies_the_mlp_runs_on_plain_ops() -> None:
    mlp = mlp_of(16, 24, has_bias=False, seed=0)
    h, residual = torch.randn(3, 16), torch.randn(3, 16)
    want = residual + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
    gated = GatedMLP(mlp, has_copy=False)
    assert gated.gate_packed is None and gated.gate_up.packed is None
    with torch.inference_mode():
        torch.testing.assert_close(gated(h, residual, False), want.detach(), rtol=1e-6, atol=1e-6)
