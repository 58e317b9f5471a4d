"""Goodput vs replicas: simulated lines and measured markers, never blended (pure builder)."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from experiments.scaleout import ScalePoint

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def scale_figure(points: Sequence[ScalePoint]) -> go.Figure:
    """One colour per batching config: a dashed line of simulated points (labelled 'simulated')
    and filled diamonds for measured trials (labelled 'measured'), on a log2 replica axis."""
    fig = go.Figure()
    configs = list(dict.fromkeys(p.config for p in points))
    for i, config in enumerate(configs):
        colour = PALETTE[i % len(PALETTE)]
        name = html.escape(config)
        sim = sorted((p for p in points if p.config == config and p.source == "simulated"),
                     key=lambda p: p.replicas)
        meas = [p for p in points if p.config == config and p.source == "measured"]
        if sim:
            fig.add_trace(go.Scatter(
                x=[p.replicas for p in sim], y=[p.goodput_rps for p in sim], mode="lines+markers",
                name=f"{name} · simulated", legendgroup=name,
                line={"color": colour, "dash": "dash"}, marker={"symbol": "circle-open", "size": 7},
                hovertemplate=_hover("simulated", sim)))
        if meas:
            fig.add_trace(go.Scatter(
                x=[p.replicas for p in meas], y=[p.goodput_rps for p in meas], mode="markers",
                name=f"{name} · measured", legendgroup=name,
                marker={"color": colour, "symbol": "diamond", "size": 12,
                        "line": {"color": "black", "width": 1}},
                customdata=[[p.trial_id, html.escape(p.router or "-")] for p in meas],
                hovertemplate=_hover("measured", meas)))
    fig.update_layout(xaxis={"title": "Replicas (GPUs)", "type": "log", "dtick": 0.30102999566},
                      yaxis={"title": "Goodput (req/s meeting all SLOs)", "rangemode": "tozero"},
                      legend={"title": "config · source"}, margin={"t": 30})
    return fig


def _hover(source: str, points: Sequence[ScalePoint]) -> str:
    load = html.escape(points[0].load_per_replica) if points else ""
    extra = " · trial %{customdata[0]} · %{customdata[1]}" if source == "measured" else ""
    return (f"<b>{source}</b>: %{{x}} replicas, goodput %{{y:.2f}} req/s<br>"
            f"load per replica {load}{extra}<extra></extra>")
