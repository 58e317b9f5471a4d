"""Capacity and prediction figures: pure functions over records (no Streamlit, no store)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from common.records import TrialRecord
from experiments.analysis.pareto import frontier
from experiments.search.capacity import SKIPPED, ConfigCapacity, knob_label

POLICY_COLOURS: dict[str, str] = {"static": "#3b6fd6", "continuous": "#f08a24", "adaptive": "#1fa8a0"}
NEUTRAL = "rgba(128,128,128,0.9)"


def _order(c: ConfigCapacity) -> tuple:
    k = c.config
    return (k.policy, k.batch_size, k.max_wait_ms, knob_label(k))


def capacity_figure(capacities: Sequence[ConfigCapacity], predicted: dict[str, float] | None = None,
                    height: int = 420) -> go.Figure:
    """Capacity per config, grouped by policy: the bar is the largest load shown to meet the
    SLOs, the whisker runs up to the lowest load that did not (the capacity lies between);
    faded bars are undecided, open diamonds the predicted capacity."""
    ordered = sorted(capacities, key=_order)
    fig = go.Figure()
    for policy in dict.fromkeys(c.config.policy for c in ordered):
        group = [c for c in ordered if c.config.policy == policy and c.capacity.status != SKIPPED]
        if group:
            fig.add_trace(_bars(group, policy))
    if predicted:
        labels = [knob_label(c.config) for c in ordered if knob_label(c.config) in predicted]
        fig.add_trace(go.Scatter(
            x=[html.escape(label) for label in labels], y=[predicted[label] for label in labels],
            mode="markers", name="predicted", hovertemplate="%{x}: predicted %{y:.3g}<extra></extra>",
            marker=dict(symbol="diamond-open", size=11, color=NEUTRAL, line=dict(width=2))))
    unit = ordered[0].unit if ordered else "req/s"
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), barmode="group",
                      legend=dict(orientation="h", yanchor="top", y=-0.25, x=0),
                      yaxis=dict(title=dict(text=f"Capacity within the SLOs ({unit})"),
                                 rangemode="tozero"),
                      xaxis=dict(title=dict(text="Server config"), type="category"))
    return fig


def _bars(group: Sequence[ConfigCapacity], policy: str) -> go.Bar:
    caps = [c.capacity for c in group]
    whisker = [(c.upper - c.capacity) if c.upper is not None else 0.0 for c in caps]
    text = [html.escape(f"{knob_label(g.config)}: {c.capacity:.3g} {g.unit} ({c.status}); {c.reason}")
            for g, c in zip(group, caps, strict=True)]
    return go.Bar(
        x=[html.escape(knob_label(g.config)) for g in group], y=[c.capacity for c in caps],
        name=html.escape(policy), hovertext=text, hoverinfo="text",
        marker=dict(color=POLICY_COLOURS.get(policy, NEUTRAL),
                    opacity=[1.0 if c.is_decided else 0.35 for c in caps]),
        error_y=dict(type="data", symmetric=False, array=whisker, arrayminus=[0.0] * len(caps),
                     color=NEUTRAL, thickness=1.5, width=4))


def predicted_pairs(trials: Sequence[TrialRecord], throughput_key: str,
                    latency_key: str) -> list[tuple[float, float]]:
    """(latency, throughput) each measured trial was *predicted* at before it ran."""
    out = []
    for t in trials:
        pred = t.details.prediction.predicted if t.details.prediction is not None else {}
        lat, thr = pred.get(latency_key), pred.get(throughput_key)
        if t.status == "done" and lat is not None and thr is not None:
            out.append((float(lat), float(thr)))
    return out


def add_predicted_frontier(fig: go.Figure, pairs: Sequence[tuple[float, float]],
                           name: str = "predicted frontier",
                           band: tuple[dict, dict] | None = None) -> go.Figure:
    """The Pareto frontier of predicted points, dashed, on an existing frontier figure; with
    `band` (the latency metric's and the throughput metric's measured / predicted ratios,
    accuracy.error_band), the region the measurements fell in around such predictions, shaded
    between the optimistic (lower latency, higher throughput) and pessimistic edges."""
    if not pairs:
        return fig
    front = [pairs[i] for i in frontier(list(pairs))]
    if band is not None:
        lat, thr = band
        for edge, (lat_x, thr_x) in (("pessimistic", (lat["hi"], thr["lo"])),
                                     ("optimistic", (lat["lo"], thr["hi"]))):
            fig.add_trace(go.Scatter(
                x=[p[0] * lat_x for p in front], y=[p[1] * thr_x for p in front], mode="lines",
                name=f"{name}: error band", showlegend=edge == "optimistic", hoverinfo="skip",
                legendgroup="band", line=dict(color=NEUTRAL, width=0.5),
                fill="tonexty" if edge == "optimistic" else None, fillcolor="rgba(128,128,128,0.15)"))
    fig.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines+markers",
                             name=name, hoverinfo="skip",
                             marker=dict(symbol="x-thin-open", size=7, color=NEUTRAL),
                             line=dict(color=NEUTRAL, width=1.5, dash="dash")))
    return fig
