"""Roofline arithmetic: the least time a step could take on a device, and how close steps came.

Pure functions over plain numbers (no torch, no clock). A step's bound is the roofline:
max(bytes it must move / memory bandwidth, FLOPs it must do / peak FLOP rate). Decode steps
are memory-bound in practice (every weight and the whole KV of every row read for one token
per row), prefill steps compute-bound (each weight used for many tokens), so the fraction of a
decode step is in effect against bandwidth and a prefill step's against peak compute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.core import StepRecord


@dataclass(frozen=True)
class ModelShape:
    """What a forward pass must read and compute, per token and per attended (query, key) pair."""

    weight_bytes: int  # weights every step reads once (the input embedding table is not read)
    matmul_params: int  # parameters in matmuls: 2 FLOPs each per token
    kv_bytes_per_token: int  # K and V of one token, all layers
    num_layers: int
    num_heads: int  # query heads
    head_dim: int

    @property
    def attention_flops_per_pair(self) -> int:
        """Q.K and P.V for one (query, key) pair: 2 + 2 FLOPs per head dim, all heads and layers."""
        return 4 * self.num_layers * self.num_heads * self.head_dim


@dataclass(frozen=True)
class DevicePeaks:
    """A device's peak memory bandwidth and matmul FLOP rate (for the model's dtype)."""

    name: str
    bandwidth_bytes_s: float
    flops_s: float
    source: str  # "table" (vendor datasheet) or "measured" (a probe on this machine)


def step_bytes(shape: ModelShape, step: StepRecord) -> int:
    """Bytes a step must move: the weights once, plus each row's context KV once."""
    # A fused attention kernel reads a row's KV once per step however many queries the row has
    # (prefill keeps tiles on chip), so context tokens, not pairs, set the traffic.
    return shape.weight_bytes + shape.kv_bytes_per_token * step.num_context_tokens


def step_flops(shape: ModelShape, step: StepRecord) -> int:
    """FLOPs a step must do: 2 per matmul parameter per token, plus attention per pair."""
    matmul = 2 * shape.matmul_params * step.num_tokens
    return matmul + shape.attention_flops_per_pair * step.num_attention_pairs


def step_bound_s(shape: ModelShape, peaks: DevicePeaks, step: StepRecord) -> float:
    """The roofline: the least time this step could take on this device."""
    return max(step_bytes(shape, step) / peaks.bandwidth_bytes_s, step_flops(shape, step) / peaks.flops_s)


def phase_fraction(
    shape: ModelShape, peaks: DevicePeaks, steps: Iterable[StepRecord], phase: str
) -> float | None:
    """Sum of bounds / sum of measured times over one phase's steps; None without such steps."""
    chosen = [s for s in steps if s.phase == phase and s.duration_s > 0]
    if not chosen:
        return None
    return sum(step_bound_s(shape, peaks, s) for s in chosen) / sum(s.duration_s for s in chosen)


def roofline_fractions(
    shape: ModelShape, peaks: DevicePeaks, steps: list[StepRecord]
) -> tuple[float | None, float | None]:
    """(decode, prefill) fractions of the hardware limit reached; mixed steps count in neither."""
    return phase_fraction(shape, peaks, steps, "decode"), phase_fraction(shape, peaks, steps, "prefill")
