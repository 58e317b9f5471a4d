"""What the eye sees first on a frontier chart: a latency axis that two slow outliers cannot
crush the useful points against, SLO labels that sit clear of the points (and of the star), and
a caption built from what the figure actually draws, so text and drawing never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import plotly.graph_objects as go

from common.numbers import num

# A linear axis squeezes everything below max/LOG_SPAN into its first tenth: past that span the
# useful points, usually the fast ones, sit in a clump at the origin. Log shows each decade alike.
LOG_SPAN = 10.0
AXIS_MODES = ("auto", "linear", "log")
TOP_MARGIN_PX = 40  # room above the plot for the SLO labels: inside it they cover the points

LINE_STYLES = {"dash": "dashed", "dot": "dotted", "dashdot": "dash-dotted", "longdash": "dashed"}
# Line traces the frontier chart may carry, by name: what each one is, in words.
LINE_MEANINGS = {
    "Pareto frontier": "the measured Pareto frontier",
    "predicted frontier": "the frontier as predicted before measuring",
    "predicted frontier (whole grid)": "the whole grid's frontier as predicted (simulated)",
}


def latency_axis_type(values: Iterable[float | None], mode: str = "auto") -> str:
    """'log' or 'linear': `mode` itself unless 'auto', which is log when the known positive
    values span more than LOG_SPAN x."""
    if mode != "auto":
        return mode
    known = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return "log" if len(known) >= 2 and max(known) / min(known) > LOG_SPAN else "linear"


def axis_x(value: float, axis_type: str) -> float:
    """Where an annotation at data value `value` goes: Plotly wants log10 of it on a log axis
    (shapes take the value itself)."""
    return math.log10(value) if axis_type == "log" and value > 0 else value


def add_slo_line(fig: go.Figure, max_ms: float, colour: str, axis_type: str) -> None:
    """A dashed vertical line at the threshold, its label above the plot area (not inside it,
    where the recommended star usually sits, just left of the line)."""
    fig.add_vline(x=max_ms, line=dict(color=colour, dash="dash", width=1.5))
    fig.add_annotation(x=axis_x(max_ms, axis_type), xref="x", y=1, yref="paper", yanchor="bottom",
                       xanchor="center", showarrow=False, text=f"SLO {num(max_ms)} ms",
                       font=dict(color=colour))


def line_words(trace) -> str | None:
    """'dotted line: the measured Pareto frontier' for a line trace that has points; None for
    markers, empty lines and lines this chart does not know."""
    meaning = LINE_MEANINGS.get(trace.name or "")
    if meaning is None or "lines" not in (trace.mode or "") or not _has_points(trace):
        return None
    style = LINE_STYLES.get(trace.line.dash or "solid", "solid")
    return f"{style} line: {meaning}"


def describe(fig: go.Figure, colour_title: str) -> str:
    """The caption of a frontier figure: only what it draws (markers, star, each line by its
    style, the error band, the SLO lines, the axis scale)."""
    names = {t.name for t in fig.data if _has_points(t)}
    parts = [f"Colour: {colour_title} · symbol: policy · size: load"]
    if "recommended" in names:
        parts.append("star: recommended")
    parts += [w for t in fig.data if (w := line_words(t))]
    if any((t.name or "").endswith(": error band") for t in fig.data if _has_points(t)):
        parts.append("shaded: where measurements fell around such predictions")
    if fig.layout.shapes:
        parts.append("orange dashed vertical line: an SLO threshold")
    text = "; ".join(parts) + "."
    if fig.layout.xaxis.type == "log":
        text += " Latency on a log scale: equal steps are equal ratios."
    return text


def _has_points(trace) -> bool:
    xs: Sequence = trace.x if trace.x is not None else ()
    return any(x is not None for x in xs)
