"""How good the predictions were: every measured trial and capacity against what was predicted
before it was measured, and the error band those errors give the predicted frontier.

Pure functions over stored trials. A trial's prediction is the one its sweep stored before it
ran (`details.prediction.predicted`); a config's predicted capacity is the latest one the search
had made (its plan, then each revision) before that config's first trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from common.details import Prediction, Revision, SearchPlan
from common.records import TrialRecord
from experiments.search.capacity import ConfigCapacity, knob_label

BAND_KEYS = ("output_tokens_per_s", "ttft_ms_p90", "tpot_ms_p90")
TABLE_KEYS = (("output_tokens_per_s", "tok/s"), ("ttft_ms_p90", "p90 TTFT ms"),
              ("tpot_ms_p90", "p90 TPOT ms"))
BAND_QUANTILES = (0.1, 0.9)
# The bracketing factor of a search started at a predicted capacity: the band's width, within
# these (with no error measured yet: DEFAULT_GROWTH, the ~30% errors of the first vLLM grid).
MIN_GROWTH, MAX_GROWTH, DEFAULT_GROWTH = 1.25, 2.0, 1.5


def log_errors(trials: Sequence[TrialRecord], key: str) -> list[float]:
    """log(measured / predicted) of `key` over the trials that stored a prediction of it."""
    out = []
    for t in trials:
        err = prediction_of(t).error.get(key)
        if t.status == "done" and err is not None and err > -1:
            out.append(-math.log1p(err))  # err = predicted / measured - 1
    return out


def ratio_band(log_ratios: Sequence[float]) -> dict | None:
    """{"lo", "hi", "n"}: the measured / predicted ratios between BAND_QUANTILES of these log
    errors, widened to contain 1 (the prediction itself); None without any."""
    if not log_ratios:
        return None
    lo, hi = np.quantile(np.asarray(log_ratios, dtype=float), BAND_QUANTILES)
    return {"lo": min(1.0, math.exp(float(lo))), "hi": max(1.0, math.exp(float(hi))),
            "n": len(log_ratios)}


def error_band(trials: Sequence[TrialRecord], capacity_errors: Sequence[float] = ()) -> dict:
    """Per metric (BAND_KEYS, and `capacity` from log(measured / predicted) capacities), where
    a measurement falls around its prediction: multiply a predicted value by lo and hi."""
    band = {key: ratio_band(log_errors(trials, key)) for key in BAND_KEYS}
    band["capacity"] = ratio_band(list(capacity_errors))
    return {k: v for k, v in band.items() if v is not None}


def knee_growth(band: dict) -> float:
    """How far past a predicted capacity the search's next load lies: one band width of the
    capacity errors (else of output tok/s), so a right prediction is bracketed in two trials."""
    b = band.get("capacity") or band.get("output_tokens_per_s")
    if b is None:
        return DEFAULT_GROWTH
    return float(min(MAX_GROWTH, max(MIN_GROWTH, b["hi"], 1 / b["lo"])))


def predicted_before(trials: Sequence[TrialRecord]) -> dict[str, float]:
    """label -> the capacity predicted for that config before its first trial (the plan's, or
    a later revision's); for a config never measured, the latest prediction. Empty without a
    plan."""
    latest: dict[str, float] = {}
    before: dict[str, float] = {}
    for t in sorted(trials, key=lambda t: t.trial_id):
        label = knob_label(t.config)
        if label not in before and label in latest:
            before[label] = latest[label]
        plan = prediction_of(t).plan or SearchPlan()
        if label not in before and plan.calibration_predicted is not None:
            before[label] = float(plan.calibration_predicted)  # predicted from the probes alone
        latest.update(plan.predicted)
        latest.update((t.details.revision or Revision()).predicted)
    return {**latest, **before}


def capacity_errors(capacities: Sequence[ConfigCapacity], predicted: dict[str, float]) -> list[float]:
    """log(measured / predicted) capacity of every decided config with a prediction."""
    out = []
    for c in capacities:
        p = predicted.get(knob_label(c.config))
        if c.capacity.is_decided and c.capacity.capacity > 0 and p:
            out.append(math.log(c.capacity.capacity / p))
    return out


def trial_rows(trials: Sequence[TrialRecord]) -> list[dict]:
    """Predicted vs measured per measured trial (TABLE_KEYS), errors as predicted / measured - 1."""
    rows = []
    for t in sorted(trials, key=lambda t: t.trial_id):
        pred = prediction_of(t)
        if t.status != "done" or not pred.predicted:
            continue
        row: dict = {"trial": t.trial_id, "config": t.config.label}
        for key, name in TABLE_KEYS:
            p, m = pred.predicted.get(key), t.metrics.get(key)
            row[f"{name} predicted"], row[f"{name} measured"] = p, m
            row[f"{name} error"] = _pct(p / m - 1 if p is not None and m else None)
        rows.append(row)
    return rows


def capacity_rows(capacities: Sequence[ConfigCapacity], predicted: dict[str, float]) -> list[dict]:
    """Per config: capacity predicted before measuring vs measured (or why not measured)."""
    rows = []
    for c in capacities:
        p, found = predicted.get(knob_label(c.config)), c.capacity
        measured = found.capacity if found.num_probes else None
        rows.append({"config": knob_label(c.config), "unit": c.unit, "predicted": p,
                     "measured": measured, "status": found.status,
                     "error": _pct(p / measured - 1 if p is not None and measured else None)})
    return rows


def median_abs_errors(rows: Sequence[dict]) -> dict[str, float]:
    """Median |error| per TABLE_KEYS metric over trial_rows."""
    out = {}
    for _, name in TABLE_KEYS:
        errs = [abs(float(r[f"{name} error"].rstrip("%"))) / 100 for r in rows if r[f"{name} error"]]
        if errs:
            out[name] = float(np.median(errs))
    return out


def _pct(err: float | None) -> str | None:
    return None if err is None else f"{err:+.0%}"


def calibration_summary(trials: Sequence[TrialRecord]) -> dict | None:
    """The CLI contract's `calibration`: `probes` (probe runs of a started server's calibration;
    on tradeoff's own engine the one calibration trial whose steps were fitted), `model` (the
    step costs in use, ms), `initial_model` (before any refit), `refits`, `uses_refit` (whether
    the refit or the probes' fit predicts now, refit.HeldOut) and `held_out` (its score); None
    when nothing was calibrated."""
    ordered = sorted(trials, key=lambda t: t.trial_id)
    predictions = [prediction_of(t) for t in ordered]
    probed = next((p.calibration for p in predictions if p.calibration is not None), None)
    plan = next((p.plan for p in predictions if p.plan is not None), None)
    if probed is None and plan is None:
        return None
    initial = probed.cost_model if probed else plan.cost_model  # type: ignore[union-attr]
    refits = [p.refit for p in predictions if p.refit is not None]
    # A failed refit records no uses_refit: the refit chain still predicts (as before it).
    uses_refit = bool(refits and refits[-1].uses_refit is not False)
    return {"probes": len(probed.probes) if probed else 1,
            "model": refits[-1].cost_model if refits else initial, "initial_model": initial,
            "refits": len(refits), "uses_refit": uses_refit,
            "held_out": refits[-1].held_out if refits else None}


def prediction_of(trial: TrialRecord) -> Prediction:
    """The trial's stored prediction (an empty one when it has none)."""
    return trial.details.prediction or Prediction()


def prediction_summary(trials: Sequence[TrialRecord], capacities: Sequence[ConfigCapacity]) -> dict:
    """What `search --json` says of the prediction: each config's capacity predicted before it
    was measured, the calibration, the error band, and the errors' medians."""
    predicted = predicted_before(trials)
    rows = trial_rows(trials)
    return {"predicted": predicted, "calibration": calibration_summary(trials),
            "band": error_band(trials, capacity_errors(capacities, predicted)),
            "median_abs_error": median_abs_errors(rows)}
