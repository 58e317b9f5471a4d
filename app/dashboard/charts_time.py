"""A trial over time (details.timeseries): SLO attainment, queue depth and batch size per
window, stacked on one time axis, so a user sees where a config falls over."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from common.details import ServerMetrics, TimeSeries

ROWS = (("slo_attainment", "SLO attainment"), ("queue_depth", "Queue depth"),
        ("batch_size", "Batch size"))


def timeseries_figure(series: TimeSeries, height: int = 420) -> go.Figure:
    """Three stacked step charts over the trial's windows; arrivals/s shaded behind the queue."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[title for _, title in ROWS])
    t = list(series.t_s)
    window_s = series.window_s if series.window_s is not None else 1.0
    for row, (key, title) in enumerate(ROWS, start=1):
        fig.add_trace(go.Scatter(x=t, y=getattr(series, key), name=title, mode="lines+markers",
                                 line_shape="hv", connectgaps=False), row=row, col=1)
    fig.add_trace(go.Bar(x=t, y=series.arrivals_per_s, name="Arrivals (req/s)",
                         opacity=0.25, offset=0, width=window_s), row=2, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    fig.update_xaxes(title_text=f"Trial time (s), windows of {window_s:g} s",
                     row=3, col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), legend_orientation="h")
    return fig


SERVER_ROWS = (("running", "Running requests"), ("waiting", "Waiting requests"),
               ("kv_usage", "KV cache usage"))


def server_metrics_figure(summary: ServerMetrics, height: int = 380) -> go.Figure:
    """The engine's own gauges (details.server_metrics, its /metrics sampled during the
    trial), stacked on one time axis; gauges the engine does not export are left out."""
    rows = [(key, title) for key, title in SERVER_ROWS
            if any(v is not None for v in summary.series.get(key, []))]
    fig = make_subplots(rows=max(len(rows), 1), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[title for _, title in rows] or ["(no gauges exported)"])
    t = list(summary.t_s)
    for row, (key, title) in enumerate(rows, start=1):
        fig.add_trace(go.Scatter(x=t, y=summary.series[key], name=title, mode="lines+markers",
                                 line_shape="hv"), row=row, col=1)
    # None: gauges read only at the trial's ends (the scraper's default period is 0.5 s)
    interval_s = summary.interval_s if summary.interval_s is not None else 0.5
    fig.update_xaxes(title_text=f"Trial time (s), sampled every {interval_s:g} s",
                     row=max(len(rows), 1), col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), showlegend=False)
    return fig


def turns_figure(by_turn: dict, height: int = 320) -> go.Figure:
    """TTFT p50 and p90 per turn of a multi-turn workload (details.ttft_ms_by_turn)."""
    turns = sorted(by_turn, key=int)
    fig = go.Figure([go.Bar(x=[f"turn {t}" for t in turns], y=[by_turn[t][p] for t in turns],
                            name=f"TTFT {p}", text=[f"n={by_turn[t]['count']}" for t in turns])
                     for p in ("p50", "p90")])
    fig.update_layout(height=height, barmode="group", yaxis_title="TTFT (ms)",
                      margin=dict(l=10, r=10, t=30, b=10), legend_orientation="h")
    return fig
