"""Time-varying and replayed load: rate schedules and trace arrivals, as profile sections.

A rate schedule multiplies the open-loop rate over time (`m(t)`, so the sweep's rate axis
stays the load axis). Arrivals under a schedule come from the constant-rate gamma process by
time warping: an arrival at t0 of the unit schedule lands at M^-1(t0), where
M(t) = integral of m from 0 to t. For Poisson arrivals this is the exact time-rescaling of an
inhomogeneous Poisson process; burstiness keeps its meaning in the warped time.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

ATTRIBUTION = (
    "Trace data: Azure LLM inference traces 2023 (Azure Public Dataset, CC-BY 4.0), from Patel et "
    "al., \"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024."
)
# Built-in traces by name -> packaged file (experiments/traces/; loaded by experiments/spec/traces.py).
BUILTIN_TRACES: dict[str, str] = {"azure_conv": "azure_llm_2023_conv.csv.gz",
                                  "azure_code": "azure_llm_2023_code.csv.gz"}
# Points per horizon of the tabulated M(t): the midpoint rule is exact for steps and ramps
# whose corners lie on the grid (they are added to it), and within ~1e-7 s for the sine.
GRID_POINTS = 20_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RateStep(_Strict):
    """From `at_s` on, the rate is `multiplier` x the base rate."""

    at_s: float = Field(ge=0)
    multiplier: float = Field(gt=0)


class StepSchedule(_Strict):
    """Piecewise-constant rate: e.g. quiet, a burst, quiet again. Before the first step: 1x."""

    kind: Literal["steps"]
    steps: list[RateStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_order(self) -> StepSchedule:
        times = [s.at_s for s in self.steps]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("steps must have strictly increasing at_s")
        return self

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        times = np.asarray([s.at_s for s in self.steps])
        values = np.asarray([1.0, *(s.multiplier for s in self.steps)])
        return values[np.searchsorted(times, t, side="right")]

    def corners(self) -> list[float]:
        return [s.at_s for s in self.steps]


class RampSchedule(_Strict):
    """Linear ramp of the multiplier from `start_multiplier` to `end_multiplier` over `ramp_s`, then flat."""

    kind: Literal["ramp"]
    start_multiplier: float = Field(gt=0)
    end_multiplier: float = Field(gt=0)
    ramp_s: float = Field(gt=0)

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        frac = np.clip(t / self.ramp_s, 0.0, 1.0)
        return self.start_multiplier + (self.end_multiplier - self.start_multiplier) * frac

    def corners(self) -> list[float]:
        return [self.ramp_s]


class PeriodicSchedule(_Strict):
    """Diurnal-like: multiplier 1 + amplitude x sin(2 pi (t + phase_s) / period_s)."""

    kind: Literal["periodic"]
    period_s: float = Field(gt=0)
    amplitude: float = Field(ge=0, le=1)
    phase_s: float = 0.0

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        return 1.0 + self.amplitude * np.sin(2 * math.pi * (t + self.phase_s) / self.period_s)

    def corners(self) -> list[float]:
        return []


RateSchedule = Annotated[StepSchedule | RampSchedule | PeriodicSchedule, Field(discriminator="kind")]


class TraceArrival(_Strict):
    """Replay a trace: arrivals from its timestamps, lengths from its rows (scaled, clipped).

    The window is `duration_s` seconds of replay starting `start_s` into the trace; at
    `speedup` S it covers S x duration_s seconds of the trace, S times faster. Lengths are
    round(tokens x length_scale), clipped to [1, max_*_tokens] and then to the model's context.
    """

    mode: Literal["trace"]
    trace: str = Field(min_length=1)  # a built-in trace (azure_conv, azure_code) or a .csv/.jsonl path
    columns: dict[Literal["timestamp", "input", "output"], str] | None = None  # CSV column names
    time_unit: Literal["s", "ms", "us"] | None = None  # numeric timestamps; default s (CSV), ms (JSONL)
    speedup: float = Field(default=1.0, gt=0)
    start_s: float = Field(default=0.0, ge=0)
    duration_s: float = Field(default=60.0, gt=0)
    length_scale: float = Field(default=1.0, gt=0)
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Tokens per block of a Mooncake trace's `hash_ids` (its block size: 512), before length_scale.
    block_tokens: int = Field(default=512, ge=1)

    @property
    def label(self) -> str:
        return f"trace@{self.speedup:g}x"


def warp_arrivals(arrivals_s: list[float], schedule: StepSchedule | RampSchedule | PeriodicSchedule
                  ) -> list[float]:
    """Constant-rate arrival offsets mapped through M^-1 (see the module docstring)."""
    if not arrivals_s:
        return []
    target = float(max(arrivals_s))
    horizon = max(target, 1e-3)
    for _ in range(60):
        grid, cum = _cumulative(schedule, horizon)
        if cum[-1] >= target:
            return np.interp(np.asarray(arrivals_s), cum, grid).tolist()
        horizon *= 2
    raise ValueError("rate schedule multiplier is ~0 for too long to place the arrivals")


def _cumulative(schedule: StepSchedule | RampSchedule | PeriodicSchedule, horizon_s: float
                ) -> tuple[np.ndarray, np.ndarray]:
    corners = [c for c in schedule.corners() if 0 < c < horizon_s]
    grid = np.union1d(np.linspace(0.0, horizon_s, GRID_POINTS), corners)
    mids = (grid[1:] + grid[:-1]) / 2
    cum = np.concatenate([[0.0], np.cumsum(schedule.multiplier(mids) * np.diff(grid))])
    return grid, cum
