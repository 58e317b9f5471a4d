"""A self-contained HTML report of one sweep's recommendation for team demos.

Plotly's JavaScript is inlined, so the file opens offline; every user-provided string (sweep
and profile names, errors, the model id) is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape

from app.dashboard import charts, report_turns
from common.numbers import num
from experiments.analysis.pareto import ConfigPoint, aggregate, classify
from experiments.analysis.queries import SweepAnalysis, coarse_note, export_analysis
from experiments.analysis.recommend import KNEE_LATENCY_KEY, OBJECTIVES, Recommendation, config_to_dict
from experiments.predict import accuracy
from experiments.spec.arrivals import ATTRIBUTION, BUILTIN_TRACES

TEMPLATE = "plotly_white"  # the report is a light document, outside any Streamlit theme
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1f2328;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem}
.meta{color:#59636e}.box{border:1px solid #d0d7de;border-radius:8px;padding:1rem 1.2rem}
.ok{color:#1a7f37;font-weight:600}.miss{color:#cf222e;font-weight:600}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #d0d7de;
padding:.3rem .6rem;text-align:left;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
pre{background:#f6f8fa;padding:.8rem;border-radius:6px;overflow-x:auto;font-size:.85rem}
"""


def _table(rows: Sequence[dict]) -> str:
    if not rows:
        return "<p class='meta'>(none)</p>"
    head = "".join(f"<th>{escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    return escape(num(value))


def _meta(analysis: SweepAnalysis) -> str:
    s = analysis.sweep
    items = [("sweep", f"#{s.id} {s.name}"), ("profile", s.profile.get("name")),
             ("model", s.model), ("device", s.device_name or s.device), ("status", s.status),
             ("trials", f"{s.trials_done} done, {s.trials_failed} failed of {s.trials_total}"),
             ("created (UTC)", s.created_at.strftime("%Y-%m-%d %H:%M"))]
    return _table([{k: v for k, v in items}])


def slo_rows(rec: Recommendation) -> list[dict]:
    """The recommendation's SLOs: threshold, where it came from, the measured value."""
    rules = {r.slo.key: r.rule for r in rec.rules}
    n = rec.point.n if rec.point is not None else 0
    return [{"SLO": f"{c.slo.percentile} {charts.LATENCY_NAMES[c.slo.metric]}",
             "threshold (ms)": float(f"{c.slo.max_ms:.3g}"), "rule": rules.get(c.slo.key, "absolute"),
             f"measured (ms, mean of {n})": None if c.value is None else float(f"{c.value:.3g}"),
             "within": "yes" if c.passed else "no"} for c in rec.slo_checks]


def _recommendation(analysis: SweepAnalysis) -> str:
    rec = analysis.recommendation
    verdict = ("<span class='ok'>meets the SLOs</span>" if rec.feasible
               else "<span class='miss'>no config was shown to carry load within the SLOs: "
                    "nearest miss</span>")
    config = _table([config_to_dict(rec.config)]) if rec.config else ""
    return (f"<div class='box'><p>{verdict}</p>{config}<p>{escape(rec.explanation)}</p>"
            f"{_table(slo_rows(rec))}</div>")


def _capacity(analysis: SweepAnalysis) -> str:
    """Each config's capacity (a search's answer replayed, or read off a grid's load levels):
    the sentence and one row per config; nothing for a grid without SLOs."""
    caps = analysis.capacities
    if not caps:
        return ""
    text = coarse_note(analysis)  # the sentence itself is the recommendation's, shown above
    css = "ok" if analysis.recommendation.feasible else "miss"
    rows = [{"config": d["label"], "capacity": d["capacity"], "upper": d["upper"],
             "unit": d["unit"], "decided": "yes" if d["decided"] else "no", "status": d["status"],
             "reason": d["reason"], "trials": d["trials"]} for d in (c.to_dict() for c in caps)]
    return (f"<h2>Capacity within the SLOs</h2><div class='box'><p class='{css}'>{escape(text)}</p>"
            f"{_table(rows)}</div>")


def _figure(points: Sequence[ConfigPoint], analysis: SweepAnalysis, keys: tuple[str, str]) -> str:
    labels = classify(points, *keys)
    fig = charts.frontier_figure(points, labels, *keys, analysis.recommendation.config,
                                 analysis.slos)
    fig.update_layout(template=TEMPLATE)
    return fig.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False})


def _frontier_rows(points: Sequence[ConfigPoint], keys: tuple[str, str]) -> list[dict]:
    labels = classify(points, *keys)
    front = [p for p, c in zip(points, labels, strict=True) if c == "frontier"]
    return [{"config": p.config.label, "repetitions": p.n,
             charts.throughput_label(keys[0]): p.mean.get(keys[0]),
             charts.latency_label(keys[1]): p.mean.get(keys[1])}
            for p in sorted(front, key=lambda p: p.mean[keys[1]])]


def _prediction(analysis: SweepAnalysis) -> str:
    """The honest error table: every measured trial's prediction (made before it ran) against
    its measurement, each config's capacity predicted before measuring against the one found,
    the median errors and the error band; nothing for a sweep that predicted nothing."""
    rows = accuracy.trial_rows(analysis.trials)
    if not rows:
        return ""
    medians = ", ".join(f"{name} {err:.0%}" for name, err in accuracy.median_abs_errors(rows).items())
    band = accuracy.error_band(analysis.trials)
    spread = ", ".join(f"{charts.metric_label(k)} x{b['lo']:.2f} to x{b['hi']:.2f}"
                       for k, b in band.items())
    predicted = accuracy.predicted_before(analysis.trials)
    caps = (f"<h3>Capacity: predicted before measuring vs found</h3>"
            f"{_table(accuracy.capacity_rows(analysis.capacities, predicted))}"
            if analysis.capacities and predicted else "")
    return ("<h2>Prediction vs measurement</h2><div class='box'><p>Each trial was predicted "
            "before it ran (the engine's scheduler on a virtual clock under the step costs "
            "fitted so far); error = predicted / measured - 1. Median |error|: "
            f"{escape(medians or 'none')}. Measured / predicted, 10th to 90th percentile: "
            f"{escape(spread or 'none')}.</p>{caps}{_table(rows)}</div>")


def _reuse(analysis: SweepAnalysis) -> str:
    """TTFT by turn and the prefix-cache hit rate per config; nothing for a sweep without
    sessions or a prefix cache."""
    if not report_turns.has_reuse(analysis.trials):
        return ""
    rows = report_turns.turn_rows(analysis.trials, analysis.recommendation.config)
    return ("<h2>Turns and prefix cache</h2><div class='box'><p>Each turn of a conversation "
            "re-sends the history so far, so later turns have longer prompts, which a prefix "
            "cache makes cheap. p50 TTFT per turn (mean over repetitions), and the share of "
            "prompt tokens served from the prefix cache; - where a trial stored none.</p>"
            f"{_table(rows)}</div>")


def _export(analysis: SweepAnalysis) -> str:
    if analysis.recommendation.config is None:
        return ""
    return f"<h2>Config (tradeoff YAML)</h2><pre>{escape(export_analysis(analysis, 'yaml'))}</pre>"


def build_report(analysis: SweepAnalysis, now: datetime | None = None) -> str:
    """The whole report as one HTML document."""
    sweep, points = analysis.sweep, aggregate(analysis.trials)
    keys = (OBJECTIVES.get(analysis.recommendation.objective, "output_tokens_per_s"),
            analysis.slos[0].key if analysis.slos else KNEE_LATENCY_KEY)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    chart = _figure(points, analysis, keys) if points else "<p>No finished trials.</p>"
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>tradeoff report: {escape(sweep.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Throughput/latency report: {escape(sweep.name)}</h1>"
        f"<p class='meta'>generated by tradeoff {escape(str(sweep.provenance.get('tradeoff') or 'dev'))}"
        f" on {stamp}</p>{_meta(analysis)}{_capacity(analysis)}"
        f"<h2>Recommendation</h2>{_recommendation(analysis)}"
        f"<h2>Pareto frontier</h2>{chart}{_table(_frontier_rows(points, keys))}"
        f"{_reuse(analysis)}{_prediction(analysis)}{_export(analysis)}"
        f"{_attribution(sweep.profile)}</body></html>"
    )


def _attribution(profile: dict) -> str:
    """The CC-BY attribution of a built-in trace the sweep replayed (required by its licence)."""
    arrival = profile.get("arrival") or {}
    if arrival.get("mode") != "trace" or arrival.get("trace") not in BUILTIN_TRACES:
        return ""
    return f"<h2>Data</h2><p class='meta'>{escape(ATTRIBUTION)}</p>"


def report_filename(analysis: SweepAnalysis) -> str:
    """`tradeoff-sweep-3-chat.html`: ids and the validated profile name only, never free text."""
    return f"tradeoff-sweep-{analysis.sweep.id}-{analysis.sweep.profile.get('name', 'profile')}.html"
