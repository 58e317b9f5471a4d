"""Compare page: frontiers of several sweeps on the same axes, recommendations side by side."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from app.dashboard import charts, state, widgets
from db.store import SweepRecord
from experiments.analysis.answer import amount
from experiments.analysis.pareto import classify
from experiments.analysis.recommend import OBJECTIVES, config_to_dict


def render() -> None:
    """The Compare page."""
    st.title("Compare")
    url = state.db_url()
    sweeps = state.sweeps(url)
    if len(sweeps) < 2:
        st.info("Compare needs two sweeps or more: e.g. two models, two devices, or one sweep "
                "per batching policy. Start them on the Run page.")
        return
    by_id = {s.id: s for s in sweeps}
    chosen = st.multiselect("Sweeps", list(by_id), default=list(by_id)[:2], key="compare_sweeps",
                            format_func=lambda i: widgets.sweep_label(by_id[i]))
    if not chosen:
        st.caption("Pick the sweeps to overlay.")
        return
    picked = [by_id[i] for i in chosen]
    first = picked[0]
    throughput, latency = widgets.pick_axes(
        "compare", *widgets.default_axes(first, state.base_slos(url, state.version(first))))
    different = slo_differences(url, picked)
    if different:
        st.warning("These sweeps were judged by different SLOs, so their recommendations answer "
                   "different questions: " + widgets.md("; ".join(different)))
    st.plotly_chart(_figure(url, picked, throughput, latency), key="compare_chart")
    st.subheader("Recommended configs")
    st.dataframe(side_by_side(url, picked), key="compare_table")


def _figure(url: str, sweeps: Sequence[SweepRecord], throughput: str, latency: str):
    series = []
    for sweep in sweeps:
        points = state.points(url, state.version(sweep), (throughput, latency))
        series.append((widgets.sweep_label(sweep), points, classify(points, throughput, latency)))
    return charts.compare_figure(series, throughput, latency)


def side_by_side(url: str, sweeps: Sequence[SweepRecord]) -> dict[str, dict]:
    """One column per sweep: what it ran on and what it recommends."""
    return {widgets.sweep_label(s): _column(url, s) for s in sweeps}


def slo_differences(url: str, sweeps: Sequence[SweepRecord]) -> list[str]:
    """`sweep label: p90 TTFT <= 70 ms = ...` per sweep, when not every sweep had the same
    resolved SLOs (a relative SLO resolves to each sweep's own unloaded baseline); [] if all did."""
    rules = {widgets.sweep_label(s): state.analysis(url, state.version(s)).recommendation.rules
             for s in sweeps}
    thresholds = {tuple((r.slo.key, round(r.slo.max_ms, 6)) for r in v) for v in rules.values()}
    if len(thresholds) <= 1:
        return []
    return [f"{label}: {', '.join(r.text for r in v) or 'no SLOs'}" for label, v in rules.items()]


def _column(url: str, sweep: SweepRecord) -> dict:
    rec = state.analysis(url, state.version(sweep)).recommendation
    config = config_to_dict(rec.config) if rec.config else {}
    key = OBJECTIVES[rec.objective]
    value = rec.metrics.get(key)
    return {"model": sweep.model, "device": sweep.device_name or sweep.device,
            "profile": sweep.profile_name, "trials": str(sweep.trials_done),
            "policy": config.get("policy", "-"), "max batch size": str(config.get("batch_size", "-")),
            "max wait (ms)": str(config.get("max_wait_ms", "-")),
            "load": rec.config.load_label if rec.config else "-",
            "objective": f"{rec.objective} ({charts.throughput_label(key)})",
            "objective value": "-" if value is None else f"{value:.3g}",
            "capacity": "-" if rec.capacity is None else amount(rec.capacity),
            "SLOs": "; ".join(r.text for r in rec.rules) or "-",
            "meets SLOs": "yes" if rec.feasible else "no"}
