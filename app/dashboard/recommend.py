"""Recommend page: one card per workload profile (its latest sweep), with every export."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from app import launcher
from app.dashboard import capacity_view, charts, report, state, widgets
from db.store import SweepRecord
from experiments.analysis.answer import amount
from experiments.analysis.queries import SweepAnalysis, capacity_sentence, export_analysis
from experiments.analysis.recommend import OBJECTIVES, Recommendation
from experiments.export.render import FORMATS

# Export format -> (file suffix, MIME type); names are `tradeoff-<profile>-<sweep>.<suffix>`.
FILES: dict[str, tuple[str, str]] = {
    "json": ("json", "application/json"), "yaml": ("yaml", "application/yaml"),
    "vllm": ("vllm.sh", "text/x-shellscript"), "triton": ("config.pbtxt", "text/plain"),
    "ray-serve": ("ray_serve.py", "text/x-python"),
    "torchserve": ("model-config.yaml", "application/yaml"),
}


def render() -> None:
    """The Recommend page."""
    st.title("Recommend")
    url = state.db_url()
    sweeps = state.sweeps(url)
    if not sweeps:
        widgets.demo_offer(url, key="recommend_demo")
        return
    st.caption("The latest sweep of each workload profile, its recommended config, and the "
               "config for your server.")
    for profile, its_sweeps in by_profile(sweeps).items():
        with st.container(border=True):
            _card(url, profile, its_sweeps)


def by_profile(sweeps: Sequence[SweepRecord]) -> dict[str, list[SweepRecord]]:
    """Sweeps grouped by profile name, newest first (so [0] is the latest of each)."""
    groups: dict[str, list[SweepRecord]] = {}
    for sweep in sweeps:
        groups.setdefault(sweep.profile_name or sweep.profile.get("name", "?"), []).append(sweep)
    return groups


def _card(url: str, profile: str, sweeps: list[SweepRecord]) -> None:
    st.subheader(f"Profile: {widgets.md(profile)}")
    description = sweeps[0].profile.get("description")
    if description:
        st.caption(widgets.md(description))
    by_id = {s.id: s for s in sweeps}
    sweep_id = st.selectbox("Sweep", list(by_id), key=f"recommend_sweep_{profile}",
                            format_func=lambda i: widgets.sweep_label(by_id[i]))
    sweep = by_id[sweep_id]
    if launcher.is_active(sweep):
        widgets.live_strip(url, sweep.id, state.version(sweep))
    analysis = state.analysis(url, state.version(sweep))
    rec = analysis.recommendation
    if rec.config is None:
        st.info(widgets.md(rec.explanation))
        return
    _config(rec)
    (st.success if rec.feasible else st.warning)(widgets.md(capacity_sentence(analysis)))
    if rec.slo_checks:
        st.dataframe(report.slo_rows(rec), hide_index=True)
    capacity_view.capacity_section(url, sweep, f"recommend_capacity_{profile}", sentence=False)
    _downloads(analysis, profile)


def _config(rec: Recommendation) -> None:
    c, cap = rec.config, rec.capacity
    key = OBJECTIVES[rec.objective]
    cols = st.columns([1.3, 1, 1, 1.4, 1.5])
    cols[0].metric("Policy", c.policy)
    cols[1].metric("Max batch size", c.batch_size)
    cols[2].metric("Max wait", f"{c.max_wait_ms:g} ms")
    if cap is not None:  # the answer: what the config carries within the SLOs
        cols[3].metric("Carries", amount(cap), help="capacity within the SLOs (see the sentence)")
    else:
        cols[3].metric("Measured at", load_label(c))
    value = rec.metrics.get(key)
    cols[4].metric(charts.throughput_label(key), "-" if value is None else f"{value:.3g}",
                   help=charts.throughput_label(key) + " at that load, mean over repetitions")


def load_label(c) -> str:
    """`4 users`, `2.5 req/s` or `2x speed-up`."""
    return (f"{c.concurrency} user{'s' if c.concurrency != 1 else ''}" if c.concurrency is not None
            else f"{c.speedup:g}x speed-up" if c.speedup is not None  # a trace sweep's load axis
            else f"{c.rate:g} req/s")


def _downloads(analysis: SweepAnalysis, profile: str) -> None:
    st.markdown("**Export the config**")
    cols = st.columns(len(FORMATS))
    stem = f"tradeoff-{analysis.sweep.profile.get('name', 'profile')}-{analysis.sweep.id}"
    for col, fmt in zip(cols, FORMATS, strict=True):
        suffix, mime = FILES.get(fmt, ("txt", "text/plain"))
        col.download_button(fmt, export_analysis(analysis, fmt), file_name=f"{stem}.{suffix}",
                            mime=mime, key=f"dl_{profile}_{fmt}", on_click="ignore",
                            icon=":material/download:")
    # Deferred: the report inlines Plotly's JavaScript (~4 MB); build it only on click.
    st.download_button("HTML report for the team", lambda: report.build_report(analysis),
                       file_name=report.report_filename(analysis), mime="text/html",
                       key=f"dl_{profile}_report", on_click="ignore", type="primary",
                       icon=":material/description:",
                       help="one self-contained file: charts included, opens offline")
