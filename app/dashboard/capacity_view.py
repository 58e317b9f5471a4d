"""Capacity and prediction sections shared by the Run and Explore pages."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st

from app.dashboard import capacity_charts, charts, state, widgets
from common.numbers import readable_rows
from common.records import TrialRecord
from db.store import SweepRecord
from experiments.analysis.queries import (
    capacity_sentence,
    is_search,
    predicted_capacity,
    predicted_grid,
    prediction_errors,
)
from experiments.predict import accuracy
from experiments.search.capacity import ConfigCapacity


@st.cache_resource(ttl=state.STABLE_TTL_S, max_entries=16, show_spinner=False)
def capacities(url: str, key: state.SweepVersion) -> list[ConfigCapacity]:
    """Each config's capacity: the one analysis's (cached per sweep version)."""
    return state.analysis(url, key).capacities


def capacity_section(url: str, sweep: SweepRecord, chart_key: str, whatif: bool = False,
                     sentence: bool = True) -> None:
    """The sentence naming the config that carries the most within the SLOs (the one
    recommendation's), and the chart per config: a search's answer, or read off a grid's load
    levels (nothing for a grid without SLOs). The chart is under the sweep's own SLOs; with
    `whatif` the page shows the what-if answer itself, so this says which SLOs the chart uses.
    `sentence`: False where the page already shows the recommendation's sentence."""
    key = state.version(sweep)
    caps = capacities(url, key)
    if not caps:
        return
    trials = state.trials(url, key)
    analysis = state.analysis(url, key)
    text = widgets.md(capacity_sentence(analysis))
    if whatif:
        st.info("The chart below is under the sweep's own SLOs, not the what-if ones: " + text)
    elif sentence:
        rec = analysis.recommendation
        decided = rec.feasible and rec.capacity is not None and rec.capacity.capacity.is_decided
        (st.success if decided else st.info)(text)  # an undecided answer is a lower bound
    search = is_search(sweep)
    fig = capacity_charts.capacity_figure(caps, predicted_capacity(trials) if search else None)
    st.plotly_chart(fig, key=chart_key)
    st.caption(_SEARCH_CAPTION if search else _GRID_CAPTION)
    with st.expander("Capacity per config"):
        st.dataframe(readable_rows([c.to_dict() | {"config": None} for c in caps]), hide_index=True,
                     column_order=["label", "capacity", "upper", "unit", "decided", "status",
                                   "trials", "reason"])


_SEARCH_CAPTION = (
    "Bar: the largest load shown to meet the SLOs (attainment interval at or above the target); "
    "whisker: up to the lowest load that did not. Faded: undecided (budget, client-bound or "
    "failed trials) or pruned (ruled out as unable to win, searched no further); open diamond: "
    "predicted before measuring. Configs the prediction ruled out before measuring are listed "
    "below, not drawn.")
_GRID_CAPTION = (
    "Bar: the largest load level of the grid met (attainment at or above the target, every "
    "lighter level too); whisker: up to the next level, which missed (the boundary lies between, "
    "untried). No whisker: met at every level tried, so capacity is at least the bar. Faded: no "
    "trustworthy reading (client-bound or failed trials).")


def add_predictions(fig: go.Figure, trials: Sequence[TrialRecord], throughput: str,
                    latency: str) -> go.Figure:
    """The predicted frontier (dashed) of the measured points, each as predicted before it ran,
    with the error band of the predictions so far where both axes have one."""
    return capacity_charts.add_predicted_frontier(
        fig, capacity_charts.predicted_pairs(trials, throughput, latency),
        band=axes_band(trials, throughput, latency))


def axes_band(trials: Sequence[TrialRecord], throughput: str, latency: str) -> tuple | None:
    """(latency band, throughput band) from the measured-vs-predicted errors; None if either
    axis has none."""
    lat, thr = (accuracy.ratio_band(accuracy.log_errors(trials, k)) for k in (latency, throughput))
    return None if lat is None or thr is None else (lat, thr)


@st.cache_resource(ttl=state.STABLE_TTL_S, max_entries=8, show_spinner="Simulating the grid...")
def grid_prediction(url: str, key: state.SweepVersion) -> list:
    """Every config x load predicted under the fit to the stored steps (cached per version)."""
    store = state.get_store(url)
    return predicted_grid(store, store.get_sweep(key[0]))


def add_grid_prediction(fig: go.Figure, url: str, key: state.SweepVersion, throughput: str,
                        latency: str) -> go.Figure:
    """The predicted frontier of the whole grid, measured or not (dashed)."""
    pairs = [(m[latency], m[throughput]) for _, m in grid_prediction(url, key)
             if m.get(latency) is not None and m.get(throughput) is not None]
    return capacity_charts.add_predicted_frontier(fig, pairs, "predicted frontier (whole grid)",
                                                  band=axes_band(state.trials(url, key), throughput,
                                                                 latency))


def prediction_table(trials: Sequence[TrialRecord], capacities: Sequence[ConfigCapacity] = ()) -> None:
    """The honest error table: median absolute prediction error per metric, every measured
    trial's prediction (made before it ran) against its measurement, and, for a search, every
    config's capacity predicted before it was measured against the capacity found."""
    errors = prediction_errors(list(trials))
    if not errors:
        return
    with st.expander("Prediction error (simulator vs measured)"):
        st.caption("Each trial was predicted before it ran, by the engine's scheduler on a "
                   "virtual clock under a cost model fitted to the steps of the trials before it "
                   "(on a server tradeoff starts: to probes of the first server, refitted to "
                   "every trial measured since). Error = predicted / measured - 1.")
        st.dataframe([{"metric": charts.metric_label(k), "trials": v["n"],
                       "median |error|": f"{v['median_abs_error']:.1%}"}
                      for k, v in sorted(errors.items())], hide_index=True)
        st.dataframe(readable_rows(accuracy.trial_rows(trials)), hide_index=True)
        predicted = accuracy.predicted_before(list(trials))
        if capacities and predicted:
            st.markdown("**Capacity: predicted before measuring vs found**")
            st.dataframe(readable_rows(accuracy.capacity_rows(capacities, predicted)), hide_index=True)
