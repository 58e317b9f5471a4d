"""What a trial's details carry of predictions: the forecast, its calibration and refit, and a
capacity search's plan and revisions (the records a resumed search replays from).

Cost models, step summaries and per-label maps stay plain JSON values: their own modules
(experiments/predict/simulate.py: cost_to_dict, step_summary) own their shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.details_base import Record, extra_field


@dataclass(frozen=True)
class SearchPlan(Record):
    """A capacity search's plan, made once after its calibration trial and stored with it
    (`prediction.plan`): where each config's search starts, which are skipped and why. Resume
    and the UI replay the search from it. Keys are config labels (`knob_label`)."""

    start: dict[str, float] = field(default_factory=dict)  # label -> first load
    skipped: dict[str, str] = field(default_factory=dict)  # label -> why not measured
    predicted: dict[str, float] = field(default_factory=dict)  # label -> predicted capacity
    predicted_value: dict[str, float] = field(default_factory=dict)  # objective at that capacity
    growth: dict[str, float] = field(default_factory=dict)  # label -> bracketing factor
    first: str | None = None  # the calibration config (its server already up)
    cost_model: dict | None = None  # the fit the plan came from
    calibration_predicted: float | None = None  # the calibration config's, from probes alone
    failed: str | None = None  # why no plan could be made (every config starts at the default)
    extra: dict[str, Any] = extra_field()

    OPTIONAL = frozenset({"predicted", "predicted_value", "growth", "first", "cost_model",
                          "calibration_predicted", "failed"})


@dataclass(frozen=True)
class Revision(Record):
    """A search's revision after a trial (`details.revision`), replayed at the same trial: configs
    pruned, and from a refitted black-box fit new start loads, bracketing and order."""

    pruned: dict[str, str] = field(default_factory=dict)  # label -> why
    start: dict[str, float] = field(default_factory=dict)
    growth: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # configs not started yet, most promising first
    predicted: dict[str, float] = field(default_factory=dict)
    cost_model: dict | None = None
    extra: dict[str, Any] = extra_field()

    OPTIONAL = frozenset({"pruned", "start", "growth", "order", "predicted", "cost_model"})

    @classmethod
    def of(cls, revision: Revision | Mapping[str, Any]) -> Revision:
        """A revision from a record or a dict; a dict with no revision key is the older bare
        form, the pruned configs alone (label -> why)."""
        if isinstance(revision, Revision):
            return revision
        keys = {"pruned", "start", "growth", "order", "predicted", "cost_model"}
        return cls.from_dict(revision if set(revision) & keys else {"pruned": dict(revision)})

    def __bool__(self) -> bool:
        return bool(self.pruned or self.start or self.growth or self.order or self.predicted)


@dataclass(frozen=True)
class ProbeCalibration(Record):
    """Black-box probes of a started server and the fit to them (`prediction.calibration`)."""

    cost_model: dict | None = None
    probes: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class Refit(Record):
    """A calibrated fit refined by this trial (`prediction.refit`): `cost_model` predicts next
    (the refit while it beats the probes on trials it had not seen, else the probes' fit)."""

    cost_model: dict | None = None
    chain: dict | None = None  # the refit itself, warm start of the next one
    held_out: dict | None = None  # refit.HeldOut as a dict
    uses_refit: bool | None = None
    trials: int | None = None
    failed: str | None = None
    extra: dict[str, Any] = extra_field()

    OPTIONAL = frozenset({"chain", "held_out", "uses_refit", "trials", "failed"})


@dataclass(frozen=True)
class Prediction(Record):
    """`details.prediction`: what a cost model fitted before this trial predicted, its relative
    error against the measurement, this trial's step summary for later fits, and, on the trials
    that carry them, the calibration, the refit and the search plan."""

    cost_model: dict | None = None
    predicted: dict[str, float | None] = field(default_factory=dict)  # PREDICTED_KEYS
    error: dict[str, float | None] = field(default_factory=dict)  # predicted / measured - 1
    steps: dict = field(default_factory=dict)  # simulate.step_summary
    failed: str | None = None  # why nothing was predicted
    calibration: ProbeCalibration | None = None
    refit: Refit | None = None
    plan: SearchPlan | None = None
    extra: dict[str, Any] = extra_field()

    NESTED = {"calibration": ProbeCalibration, "refit": Refit, "plan": SearchPlan}
    OPTIONAL = frozenset({"cost_model", "predicted", "error", "steps", "failed", "calibration",
                          "refit", "plan"})
