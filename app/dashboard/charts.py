"""Plotly figure builders: pure functions over records (no Streamlit, no store, no metric math).

No template is set here: inside the dashboard `st.plotly_chart(theme="streamlit")` styles the
figures for the light or the dark theme; the HTML report sets its own. Every user-provided
string is HTML-escaped, because Plotly renders tags in names, titles and hover text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from app.dashboard import chart_reading
from app.dashboard.colours import COLOUR_OPTIONS, Colour, colour_of  # noqa: F401 (pages use charts.*)
from common.records import SLO, RequestRecord, TrialConfig
from db.store import StoredRequest
from experiments.analysis.pareto import ConfigPoint

THROUGHPUT_LABELS: dict[str, str] = {
    "output_tokens_per_s": "Output throughput (tokens/s)",
    "total_tokens_per_s": "Total throughput (tokens/s)",
    "requests_per_s": "Request throughput (req/s)",
    "goodput_rps": "Goodput (req/s meeting all SLOs)",
}
LATENCY_NAMES: dict[str, str] = {
    "ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "ITL", "e2e_ms": "E2E",
    "queue_wait_ms": "Queue wait", "service_ms": "Service time",
}
OTHER_LABELS: dict[str, str] = {
    "slo_attainment": "SLO attainment (fraction of requests)",
    "mean_batch_size": "Mean batch size (requests per decode step)",
    "roofline_decode": "Decode roofline (fraction of the memory-bandwidth bound)",
    "roofline_prefill": "Prefill roofline (fraction of the compute bound)",
}
POLICY_SYMBOLS: dict[str, str] = {"continuous": "circle", "static": "diamond", "adaptive": "triangle-up"}
WEBGL_ABOVE = 1000  # SVG below (crisp, works without a GPU), WebGL above (5,000 points fast)
NEUTRAL = "rgba(128,128,128,0.9)"  # lines that must read on light and dark backgrounds
HIGHLIGHT = "#f5a300"
# Mid-luminance stops: every batch size stays visible on a white and on a near-black background.
BATCH_COLORSCALE = [[0.0, "#3b6fd6"], [0.35, "#1fa8a0"], [0.6, "#b5b52a"], [0.8, "#f08a24"],
                    [1.0, "#d63a3a"]]
MIN_SIZE, MAX_SIZE = 8.0, 20.0
MAX_LOAD_LEGEND = 5


def latency_label(key: str) -> str:
    """`ttft_ms_p90` -> `p90 TTFT (ms)`."""
    metric, _, stat = key.rpartition("_")
    return f"{stat} {LATENCY_NAMES.get(metric, metric)} (ms)"


def throughput_label(key: str) -> str:
    """Axis title of a throughput metric, with its unit."""
    return THROUGHPUT_LABELS.get(key, key)


def metric_label(key: str) -> str:
    """Any flat metric key as words with its unit."""
    if key in THROUGHPUT_LABELS:
        return THROUGHPUT_LABELS[key]
    if key.rpartition("_")[0] in LATENCY_NAMES:
        return latency_label(key)
    return OTHER_LABELS.get(key, key)


def load_value(config: TrialConfig) -> float:
    """The load level as one number: virtual users, requests/s, or a trace's speed-up."""
    if config.concurrency is not None:
        return float(config.concurrency)
    return float(config.rate if config.rate is not None else config.speedup or 0.0)


def _sizes(configs: Sequence[TrialConfig]) -> dict[float, float]:
    # Marker size by rank of the load level: areas stay comparable whatever the load units.
    levels = sorted({load_value(c) for c in configs})
    if len(levels) == 1:
        return {levels[0]: (MIN_SIZE + MAX_SIZE) / 2}
    step = (MAX_SIZE - MIN_SIZE) / (len(levels) - 1)
    return {level: MIN_SIZE + i * step for i, level in enumerate(levels)}


def error_bars(points: Sequence[ConfigPoint], key: str) -> dict | None:
    # Error bars are the 95% intervals over repetitions; none without repetitions.
    if all(p.ci_low.get(key) is None for p in points):
        return None
    means = np.array([_or_nan(p.mean.get(key)) for p in points], dtype=float)
    # Latencies and rates are never negative: a t-interval over 2-3 repetitions can reach below
    # zero, but the bar stops at the physical range (the axis must not start at -400 ms).
    low = np.maximum(np.array([_or_nan(p.ci_low.get(key)) for p in points], dtype=float), 0.0)
    high = np.array([_or_nan(p.ci_high.get(key)) for p in points], dtype=float)
    return dict(type="data", symmetric=False, array=np.nan_to_num(high - means),
                arrayminus=np.nan_to_num(means - low), thickness=1, width=0, color=NEUTRAL)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _hover(throughput_key: str, latency_key: str) -> str:
    return ("<b>%{text}</b><br>"
            f"{throughput_label(throughput_key)}: %{{y:.3g}}<br>"
            f"{latency_label(latency_key)}: %{{x:.3g}}<br>"
            "goodput: %{customdata[1]:.3g} req/s · SLO attainment: %{customdata[2]:.0%}<br>"
            "repetitions: %{customdata[3]}<extra></extra>")


def _customdata(points: Sequence[ConfigPoint], indices: Sequence[int]) -> np.ndarray:
    # Numbers only: Plotly validates a float array at once, object arrays value by value.
    return np.array([(i, _or_nan(points[i].mean.get("goodput_rps")),
                      _or_nan(points[i].mean.get("slo_attainment")), points[i].n)
                     for i in indices], dtype=float).reshape(-1, 4)


def _hover_text(points: Sequence[ConfigPoint], indices: Sequence[int], labels) -> list[str]:
    return [f"{points[i].config.label} ({labels[i].replace('_', ' ')}"
            f"{', saturated' if points[i].saturated else ''})"
            + (f"<br>not on any frontier: {points[i].untrusted_reason}" if points[i].untrusted_reason else "")
            for i in indices]


def _policy_trace(points, labels, indices, policy, keys, sizes, colour: Colour) -> go.Scatter:
    throughput_key, latency_key = keys
    chosen = [points[i] for i in indices]
    marker = dict(
        # Client-bound points are hollow: measured, but not the server's numbers.
        symbol=[POLICY_SYMBOLS.get(policy, "square") + ("-open" if points[i].untrusted_reason else "")
                for i in indices],
        size=np.array([sizes[load_value(p.config)] for p in chosen]),
        color=np.array([colour.values[i] for i in indices], dtype=float), colorscale=BATCH_COLORSCALE,
        cmin=colour.cmin, cmax=colour.cmax,
        line=dict(width=[2.0 if points[i].untrusted_reason else 0.5 for i in indices], color=NEUTRAL),
        opacity=np.array([1.0 if labels[i] != "dominated" else 0.55 for i in indices]),
    )
    cls = go.Scattergl if len(points) > WEBGL_ABOVE else go.Scatter
    return cls(
        x=np.array([_or_nan(p.mean.get(latency_key)) for p in chosen]),
        y=np.array([_or_nan(p.mean.get(throughput_key)) for p in chosen]),
        mode="markers", name=policy, marker=marker, customdata=_customdata(points, indices),
        text=_hover_text(points, indices, labels), hovertemplate=_hover(*keys),
        legendgroup="policy", legendgrouptitle_text="policy (symbol)",
        error_x=error_bars(chosen, latency_key), error_y=error_bars(chosen, throughput_key),
    )


def _colorbar_trace(colour: Colour) -> go.Scatter:
    # A single invisible marker owns the colour bar, so both policy traces share one scale.
    bar = dict(title=dict(text=colour.title), thickness=14, len=0.9)
    if colour.tickvals is not None:
        bar.update(tickvals=colour.tickvals, ticktext=colour.ticktext)
    return go.Scatter(
        x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
        marker=dict(color=[colour.cmin], cmin=colour.cmin, cmax=colour.cmax,
                    colorscale=BATCH_COLORSCALE, showscale=True, colorbar=bar))


def _load_legend(sizes: dict[float, float], kind: str) -> list[go.Scatter]:
    levels = list(sizes)
    if len(levels) > MAX_LOAD_LEGEND:  # a legend entry per level would bury the others
        step = (len(levels) - 1) / (MAX_LOAD_LEGEND - 1)
        levels = [levels[round(i * step)] for i in range(MAX_LOAD_LEGEND)]
    return [go.Scatter(x=[None], y=[None], mode="markers", name=_load_name(level, kind),
                       legendgroup="load", legendgrouptitle_text="load (size)",
                       marker=dict(size=sizes[level], color=NEUTRAL, symbol="circle-open"))
            for level in levels]


def _load_name(level: float, kind: str) -> str:
    if kind == "trace":
        return f"trace {level:g}x"
    if kind == "open":
        return f"{level:g} req/s"
    return f"{level:g} user" + ("" if level == 1 else "s")


def _load_kind(configs: Sequence[TrialConfig]) -> str:
    if all(c.concurrency is not None for c in configs):
        return "closed"
    return "trace" if all(c.speedup is not None for c in configs) else "open"


def _frontier_trace(points, labels, keys, name: str = "Pareto frontier",
                    color: str = NEUTRAL) -> go.Scatter:
    throughput_key, latency_key = keys
    front = sorted((p for p, c in zip(points, labels, strict=True) if c == "frontier"),
                   key=lambda p: p.mean[latency_key])
    return go.Scatter(x=[p.mean[latency_key] for p in front],
                      y=[p.mean[throughput_key] for p in front], mode="lines", name=name,
                      line=dict(color=color, width=2, dash="dot", shape="linear"),
                      hoverinfo="skip")


def _recommended_trace(point: ConfigPoint, keys) -> go.Scatter:
    throughput_key, latency_key = keys
    return go.Scatter(x=[point.mean.get(latency_key)], y=[point.mean.get(throughput_key)],
                      mode="markers", name="recommended", hoverinfo="skip", cliponaxis=False,
                      marker=dict(symbol="star", size=24, color="rgba(0,0,0,0)",
                                  line=dict(width=2.5, color=HIGHLIGHT)))


def _slo_lines(fig: go.Figure, slos: Sequence[SLO], latency_key: str, axis_type: str) -> None:
    for slo in slos:
        if slo.key == latency_key:
            chart_reading.add_slo_line(fig, slo.max_ms, HIGHLIGHT, axis_type)


def frontier_figure(
    points: Sequence[ConfigPoint], labels: Sequence[str], throughput_key: str, latency_key: str,
    recommended: TrialConfig | None = None, slos: Sequence[SLO] = (), height: int = 520,
    colour_by: str = "batch_size", latency_axis: str = "auto",
) -> go.Figure:
    """Throughput vs latency per config: colour = batch size (or `colour_by`), symbol = policy,
    size = load; the latency axis `latency_axis` ('auto': log when the points span > 10x).

    `labels` come from `pareto.classify`; the frontier line joins the `frontier` points,
    dominated points are drawn fainter, client-bound ones hollow with the reason on hover.
    customdata[0] of each point is its index in `points`.
    """
    keys = (throughput_key, latency_key)
    placed = [i for i, p in enumerate(points) if p.point(throughput_key, latency_key)]
    colour = colour_of(points, colour_by)
    sizes = _sizes([points[i].config for i in placed] or [TrialConfig("static", 1, 0.0, 1)])
    fig = go.Figure()
    for policy in sorted({points[i].config.policy for i in placed}):
        indices = [i for i in placed if points[i].config.policy == policy]
        fig.add_trace(_policy_trace(points, labels, indices, policy, keys, sizes, colour))
    fig.add_trace(_frontier_trace([points[i] for i in placed], [labels[i] for i in placed], keys))
    by_config = {points[i].config: points[i] for i in placed}
    if recommended is not None and recommended in by_config:
        fig.add_trace(_recommended_trace(by_config[recommended], keys))
    fig.add_trace(_colorbar_trace(colour))
    fig.add_traces(_load_legend(sizes, _load_kind([points[i].config for i in placed])))
    axis_type = chart_reading.latency_axis_type((points[i].mean.get(latency_key) for i in placed),
                                                latency_axis)
    _slo_lines(fig, slos, latency_key, axis_type)
    _layout(fig, latency_label(latency_key), throughput_label(throughput_key), height)
    fig.update_xaxes(type=axis_type)
    if axis_type == "log":  # rangemode applies to linear axes only
        fig.update_xaxes(rangemode=None)
    if fig.layout.annotations:
        fig.update_layout(margin_t=chart_reading.TOP_MARGIN_PX)
    return fig


def _layout(fig: go.Figure, x_title: str, y_title: str, height: int) -> go.Figure:
    fig.update_layout(
        height=height, margin=dict(l=10, r=10, t=30, b=10), hovermode="closest",
        clickmode="event+select",
        # Below the plot: on the right it would collide with the colour bar.
        legend=dict(orientation="h", yanchor="top", y=-0.16, x=0, groupclick="toggleitem"),
        xaxis=dict(title=dict(text=x_title), rangemode="tozero"),
        yaxis=dict(title=dict(text=y_title), rangemode="tozero"),
    )
    return fig


def compare_figure(
    series: Sequence[tuple[str, Sequence[ConfigPoint], Sequence[str]]],
    throughput_key: str, latency_key: str, height: int = 520,
) -> go.Figure:
    """Several sweeps on the same axes: per sweep its configs (faint) and its frontier (line)."""
    fig = go.Figure()
    palette = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d"]
    keys = (throughput_key, latency_key)
    for n, (name, points, labels) in enumerate(series):
        color, safe = palette[n % len(palette)], html.escape(name)
        placed = [(p, c) for p, c in zip(points, labels, strict=True) if p.point(throughput_key, latency_key)]
        fig.add_trace(go.Scatter(
            x=[p.mean[latency_key] for p, _ in placed],
            y=[p.mean[throughput_key] for p, _ in placed], mode="markers", name=safe,
            legendgroup=str(n), marker=dict(color=color, opacity=0.45, size=8,
                                            symbol=[POLICY_SYMBOLS.get(p.config.policy, "square")
                                                    for p, _ in placed]),
            text=[html.escape(p.config.label) for p, _ in placed],
            hovertemplate=f"<b>{safe}</b><br>%{{text}}<br>%{{x:.3g}} ms, %{{y:.3g}}<extra></extra>"))
        front = _frontier_trace([p for p, _ in placed], [c for _, c in placed], keys,
                                name=f"{safe} frontier", color=color)
        front.update(mode="lines+markers", legendgroup=str(n), showlegend=False,
                     line=dict(dash="solid"))
        fig.add_trace(front)
    return _layout(fig, latency_label(latency_key), throughput_label(throughput_key), height)


# -- one trial's requests ----------------------------------------------------------------------


def as_request_record(r: StoredRequest) -> RequestRecord:
    """A stored row (ms from the trial start) as the timeline the metric functions read (s)."""
    def s(ms: float | None) -> float | None:
        return None if ms is None else ms / 1000.0

    first = s(r.first_token_ms)
    return RequestRecord(r.request_index, r.scheduled_ms / 1000.0, r.sent_ms / 1000.0,
                         s(r.admitted_ms), () if first is None else (first,), s(r.done_ms),
                         r.num_prompt_tokens, r.num_output_tokens, r.error)


def latency_figure(samples: dict[str, Sequence[float]], slos: Sequence[SLO] = ()) -> go.Figure:
    """Histograms of per-request TTFT, TPOT and E2E (ms), with SLO thresholds as lines."""
    from plotly.subplots import make_subplots

    metrics = ("ttft_ms", "tpot_ms", "e2e_ms")
    fig = make_subplots(rows=1, cols=3, subplot_titles=[LATENCY_NAMES[m] for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        fig.add_trace(go.Histogram(x=list(samples.get(metric, [])), name=LATENCY_NAMES[metric],
                                   nbinsx=30, showlegend=False,
                                   hovertemplate="%{x} ms: %{y} requests<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="ms", row=1, col=col, rangemode="tozero")
        for slo in (s for s in slos if s.metric == metric):
            fig.add_vline(x=slo.max_ms, line=dict(color=HIGHLIGHT, dash="dash"), row=1, col=col)
    fig.update_yaxes(title_text="requests", row=1, col=1)
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), bargap=0.05)
    return fig


_PHASES = (  # (name, start field, end field): the segments of one request's bar
    ("client delay", "scheduled_ms", "sent_ms"),
    ("queued", "sent_ms", "admitted_ms"),
    ("to first token", "admitted_ms", "first_token_ms"),
    ("decoding", "first_token_ms", "done_ms"),
)
_PHASE_COLORS = ("#bab0ac", "#e45756", "#f58518", "#4c78a8")


def timeline_figure(requests: Sequence[StoredRequest]) -> go.Figure:
    """One horizontal bar per request: client delay, queued, to first token, decoding (ms)."""
    fig = go.Figure()
    for (name, start, end), color in zip(_PHASES, _PHASE_COLORS, strict=True):
        rows = [(r.request_index, getattr(r, start), getattr(r, end)) for r in requests]
        rows = [(i, a, b) for i, a, b in rows if a is not None and b is not None]
        fig.add_trace(go.Bar(
            y=[i for i, _, _ in rows], x=[b - a for _, a, b in rows],
            base=[a for _, a, _ in rows], orientation="h", name=name, marker_color=color,
            hovertemplate=f"request %{{y}}: {name} %{{x:.1f}} ms<extra></extra>"))
    failed = [r for r in requests if r.error is not None]
    if failed:
        fig.add_trace(go.Scatter(
            x=[r.done_ms or r.sent_ms for r in failed], y=[r.request_index for r in failed],
            mode="markers", name="failed", marker=dict(symbol="x", color="#e45756", size=9),
            text=[html.escape(r.error or "") for r in failed],
            hovertemplate="request %{y} failed: %{text}<extra></extra>"))
    fig.update_layout(barmode="overlay", height=max(260, min(900, 14 * len(requests) + 120)),
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h"),
                      xaxis_title="time since trial start (ms)", yaxis_title="request",
                      yaxis=dict(autorange="reversed"))
    return fig


def in_flight_series(requests: Sequence[StoredRequest]) -> tuple[list[float], list[int]]:
    """Step series of requests admitted and not yet done (ms, count), from the request rows."""
    events: list[tuple[float, int]] = []
    for r in requests:
        start = r.admitted_ms if r.admitted_ms is not None else r.sent_ms
        if r.done_ms is not None:
            events += [(start, 1), (r.done_ms, -1)]
    times, counts, level = [0.0], [0], 0
    for at, delta in sorted(events, key=lambda e: (e[0], e[1])):  # a leave before a join
        level += delta
        times.append(at)
        counts.append(level)
    return times, counts


def batch_figure(requests: Sequence[StoredRequest], max_batch_size: int | None = None) -> go.Figure:
    """Requests in flight over time: the realised batch, derived from request timestamps."""
    times, counts = in_flight_series(requests)
    fig = go.Figure(go.Scatter(x=times, y=counts, mode="lines", line_shape="hv",
                               name="in flight", fill="tozeroy",
                               hovertemplate="%{x:.0f} ms: %{y} in flight<extra></extra>"))
    if max_batch_size is not None:
        fig.add_hline(y=max_batch_size, line=dict(color=HIGHLIGHT, dash="dash"),
                      annotation_text=f"max batch size {max_batch_size}")
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
                      xaxis_title="time since trial start (ms)",
                      yaxis=dict(title=dict(text="requests admitted, not done"),
                                 rangemode="tozero"))
    return fig
