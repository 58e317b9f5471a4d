"""Goodput vs replicas: simulated lines and measured markers, never blended (pure builders).

Per-replica goodput is the default y: under perfect scaling it is flat, so linear scaling reads
as linear on the log2 replica axis (total goodput over that axis would curve up like an
exponential). Total goodput is drawn on log-log axes, where perfect scaling is a straight line.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments.analysis.scaleout import REPLICA_COUNTS, ScalePoint, scaling_values

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
METRIC_TITLES = {
    "per_replica": "Goodput per replica (req/s meeting all SLOs)",
    "efficiency": "Scaling efficiency (goodput / N x one replica's)",
    "total": "Total goodput (req/s meeting all SLOs)",
}
METRIC_HOVER = {"per_replica": "%{y:.3g} req/s per replica", "efficiency": "efficiency %{y:.0%}",
                "total": "goodput %{y:.3g} req/s"}


def scale_figure(points: Sequence[ScalePoint], metric: str = "per_replica",
                 replicas_title: str = "Replicas") -> go.Figure:
    """One panel per batching config (configs that scale alike never hide under one line), each
    with a dashed line of simulated points ('simulated') and filled diamonds for measured trials
    ('measured'), on a log2 replica axis; y is `metric` (experiments.analysis.scaleout.SCALE_METRICS)."""
    configs = list(dict.fromkeys(p.config for p in points))
    fig = make_subplots(rows=1, cols=max(len(configs), 1), shared_yaxes=True,
                        horizontal_spacing=0.03, subplot_titles=[html.escape(c) for c in configs])
    for i, config in enumerate(configs):
        mine = [p for p in points if p.config == config]
        _add_series(fig, mine, metric, html.escape(config), PALETTE[i % len(PALETTE)], col=i + 1)
    return _axes(fig, metric, replicas_title, len(configs))


def router_figure(by_router: Mapping[str, Sequence[ScalePoint]], names: Mapping[str, str],
                  metric: str = "per_replica", replicas_title: str = "Replicas") -> go.Figure:
    """One config behind each router: a colour per router, simulated lines and measured
    diamonds labelled apart, on the same axes as `scale_figure`."""
    fig = make_subplots(rows=1, cols=1)
    for i, (router, points) in enumerate(by_router.items()):
        _add_series(fig, list(points), metric, html.escape(names.get(router, router)),
                    PALETTE[i % len(PALETTE)], col=1)
    return _axes(fig, metric, replicas_title, 1)


def _add_series(fig: go.Figure, points: list[ScalePoint], metric: str, name: str, colour: str,
                col: int) -> None:
    values = dict(zip(map(id, points), scaling_values(points, metric), strict=True))
    sim = sorted((p for p in points if p.source == "simulated"), key=lambda p: p.replicas)
    meas = [p for p in points if p.source == "measured" and values[id(p)] is not None]
    if sim:
        fig.add_trace(go.Scatter(
            x=[p.replicas for p in sim], y=[values[id(p)] for p in sim], mode="lines+markers",
            name=f"{name} · simulated", legendgroup=name, cliponaxis=False,
            line={"color": colour, "dash": "dash"}, marker={"symbol": "circle-open", "size": 7},
            hovertemplate=_hover("simulated", sim, metric)), row=1, col=col)
    if meas:
        fig.add_trace(go.Scatter(
            x=[p.replicas for p in meas], y=[values[id(p)] for p in meas], mode="markers",
            name=f"{name} · measured", legendgroup=name, cliponaxis=False,
            marker={"color": colour, "symbol": "diamond", "size": 12,
                    "line": {"color": "black", "width": 1}},
            customdata=[[p.trial_id, html.escape(p.router or "-")] for p in meas],
            hovertemplate=_hover("measured", meas, metric)), row=1, col=col)


def _axes(fig: go.Figure, metric: str, replicas_title: str, num_panels: int) -> go.Figure:
    fig.update_xaxes(type="log", tickvals=list(REPLICA_COUNTS), title_text=replicas_title)
    if metric == "total":  # log-log: perfect scaling is a straight line, not a curve
        fig.update_yaxes(type="log")
    else:
        fig.update_yaxes(rangemode="tozero")
    if metric == "efficiency":
        fig.add_hline(y=1.0, line={"color": "rgba(128,128,128,0.9)", "dash": "dot"},
                      row="all", col="all")
        fig.update_yaxes(tickformat=".0%")
    fig.update_yaxes(title_text=METRIC_TITLES[metric], row=1, col=1)
    fig.update_layout(legend={"title": "config · source", "orientation": "h", "y": -0.25},
                      margin={"t": 40}, height=420 if num_panels <= 2 else 380)
    return fig


def _hover(source: str, points: Sequence[ScalePoint], metric: str) -> str:
    load = html.escape(points[0].load_per_replica) if points else ""
    extra = " · trial %{customdata[0]} · %{customdata[1]}" if source == "measured" else ""
    return (f"<b>{source}</b>: %{{x}} replicas, {METRIC_HOVER[metric]}<br>"
            f"load per replica {load}{extra}<extra></extra>")
