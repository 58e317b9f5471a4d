"""Compare page: frontiers of several sweeps on the same axes, recommendations side by side."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from app.dashboard import charts, state, widgets
from db.store import SweepRecord
from experiments.pareto import classify
from experiments.recommend import OBJECTIVES, config_to_dict


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
            "objective value": "-" if value is None else f"{value:.4g}",
            "meets SLOs": "yes" if rec.feasible else "no"}
