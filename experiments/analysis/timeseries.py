"""A trial over time: SLO attainment, queue depth and batch size per window of a few seconds.

Pure numpy over request timelines and the step log, so a user sees *where* a config falls
over under time-varying load (a burst, a ramp), not only its average. Stored in
`TrialMetrics.details.timeseries` (common/details.TimeSeries) as JSON-ready lists, one value per window.
"""

from __future__ import annotations

import numpy as np

from common.records import SLO, RequestRecord
from engine.core import StepRecord
from experiments.analysis.metrics import meets_slos

# Aim for about this many windows per trial, each 1 to 10 s long.
TARGET_WINDOWS = 20
MIN_WINDOW_S, MAX_WINDOW_S = 1.0, 10.0


def window_size_s(duration_s: float) -> float:
    """Whole seconds, 1..10, giving ~TARGET_WINDOWS windows over `duration_s`."""
    return float(np.clip(round(duration_s / TARGET_WINDOWS), MIN_WINDOW_S, MAX_WINDOW_S))


def trial_timeseries(records: list[RequestRecord], background: list[RequestRecord],
                     steps: list[StepRecord], slos: list[SLO], window_s: float | None = None) -> dict:
    """Per-window series from the first scheduled to the last done time (any request).

    t_s: window start (s from the trial start); arrivals_per_s: requests scheduled in it;
    slo_attainment: share of the measured requests scheduled in it that met every SLO (None
    when none was); queue_depth: time-averaged number waiting to be admitted (None when the
    target does not report admission); batch_size: time-averaged decode batch size.
    """
    everyone = records + background
    if not everyone:
        return {"window_s": window_s or MIN_WINDOW_S, "t_s": [], "arrivals_per_s": [],
                "slo_attainment": [], "queue_depth": [], "batch_size": []}
    start_s = min(r.scheduled_s for r in everyone)
    end_s = max([r.done_s for r in everyone if r.done_s is not None] + [start_s])
    size_s = window_size_s(end_s - start_s) if window_s is None else window_s
    edges = start_s + size_s * np.arange(int(np.ceil((end_s - start_s) / size_s)) + 1)
    if edges.size < 2:
        edges = np.asarray([start_s, start_s + size_s])
    return {
        "window_s": size_s,
        "t_s": _rounded(edges[:-1] - start_s),
        "arrivals_per_s": _rounded(np.histogram([r.scheduled_s for r in everyone], edges)[0] / size_s),
        "slo_attainment": _attainment(records, slos, edges),
        "queue_depth": _queue_depth(everyone, edges),
        "batch_size": _batch_size(steps, edges),
    }


def _attainment(records: list[RequestRecord], slos: list[SLO], edges: np.ndarray) -> list:
    at = np.asarray([r.scheduled_s for r in records], dtype=float)
    good = np.asarray([meets_slos(r, slos) for r in records], dtype=float)
    which = np.searchsorted(edges, at, side="right") - 1
    out = []
    for k in range(edges.size - 1):
        mask = which == k
        out.append(round(float(good[mask].mean()), 4) if mask.any() else None)
    return out


def _queue_depth(everyone: list[RequestRecord], edges: np.ndarray) -> list:
    # Waiting = from sent until admitted (or until done, for one failed before admission).
    spans = [(r.sent_s, r.admitted_s if r.admitted_s is not None else r.done_s)
             for r in everyone if r.admitted_s is not None or r.error is not None]
    spans = [(a, b) for a, b in spans if b is not None]
    if not any(r.admitted_s is not None for r in everyone):
        return [None] * (edges.size - 1)
    arr = np.asarray(spans, dtype=float).reshape(-1, 2)
    return _rounded(_overlap(arr[:, 0], arr[:, 1], edges).sum(axis=1) / np.diff(edges))


def _batch_size(steps: list[StepRecord], edges: np.ndarray) -> list:
    decodes = [s for s in steps if s.phase == "decode"]
    if not decodes:
        return [0.0] * (edges.size - 1)
    start = np.asarray([s.start_s for s in decodes])
    end = start + np.asarray([s.duration_s for s in decodes])
    rows = np.asarray([s.num_seqs for s in decodes], dtype=float)
    busy = _overlap(start, end, edges)  # [windows, steps] seconds
    total = busy.sum(axis=1)
    mean = np.divide(busy @ rows, total, out=np.zeros_like(total), where=total > 0)
    return _rounded(mean)


def _overlap(start: np.ndarray, end: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Seconds of each interval [start_i, end_i] inside each window: shape [windows, intervals]."""
    lo = np.maximum(start[None, :], edges[:-1, None])
    hi = np.minimum(end[None, :], edges[1:, None])
    return np.clip(hi - lo, 0.0, None)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]
