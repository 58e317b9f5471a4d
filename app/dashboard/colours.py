"""Marker colours of the frontier chart: a config knob on a log scale, or a per-point metric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from experiments.analysis.pareto import ConfigPoint

# What the frontier chart's marker colour can show: a config knob or a per-point metric.
COLOUR_OPTIONS: dict[str, str] = {
    "batch_size": "max batch size",
    "max_num_batched_tokens": "prefill token budget",
    "roofline_decode": "decode roofline fraction",
    "roofline_prefill": "prefill roofline fraction",
}


@dataclass(frozen=True)
class Colour:
    """Marker colours of a frontier chart: one value per point (NaN = unknown) and its scale."""

    values: list[float]
    cmin: float
    cmax: float
    title: str
    tickvals: list[float] | None = None  # None: Plotly's own ticks
    ticktext: list[str] | None = None


def colour_of(points: Sequence[ConfigPoint], by: str) -> Colour:
    """Colour by a power-of-two knob (log scale, `none` above the largest) or a roofline metric."""
    if by in ("batch_size", "max_num_batched_tokens"):
        knobs = [getattr(p.config, by) for p in points]
        known = sorted({k for k in knobs if k is not None}) or [1]
        none_at = math.log2(known[-1]) + 1  # no budget = unlimited: past the largest
        values = [none_at if k is None else math.log2(k) for k in knobs]
        ticks = [(math.log2(k), str(k)) for k in known] + ([(none_at, "none")] if None in knobs else [])
        top = max(v for v, _ in ticks)
        return Colour(values, math.log2(known[0]), max(top, math.log2(known[0]) + 1e-9),
                      COLOUR_OPTIONS[by], [v for v, _ in ticks], [t for _, t in ticks])
    values = [_or_nan(p.mean.get(by)) for p in points]
    top = max([v for v in values if not math.isnan(v)] + [1.0])  # a fraction; > 1 means a probe was low
    return Colour(values, 0.0, top, COLOUR_OPTIONS.get(by, by))


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
