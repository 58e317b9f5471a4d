"""engine/llama.py's Linear: the oneDNN-packed copy computes what F.linear computes, at every
batch size (the layout is chosen for one; any must run on it), with and without a bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.llama import Linear, pack_weight

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
