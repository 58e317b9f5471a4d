"""Explore page: the Pareto chart of one sweep, what-if SLOs, and one config's details."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from app import launcher
from app.dashboard import capacity_view, chart_reading, charts, charts_time, state, widgets
from common.details import PrefixCache, ServerMetrics, TrialDetails
from common.numbers import num, rounded
from common.records import SLO, TrialRecord
from db.store import SweepRecord
from experiments.analysis.metrics import latency_samples
from experiments.analysis.pareto import ConfigPoint, classify
from experiments.analysis.queries import capacity_sentence
from experiments.analysis.recommend import Recommendation
from experiments.spec.profiles import SLO_METRICS, SLO_PERCENTILES

KEY_METRICS = ("output_tokens_per_s", "requests_per_s", "goodput_rps", "slo_attainment",
               "ttft_ms_p90", "tpot_ms_p90", "e2e_ms_p90", "mean_batch_size",
               "roofline_decode", "roofline_prefill")


def render() -> None:
    """The Explore page."""
    st.title("Explore")
    url = state.db_url()
    sweeps = state.sweeps(url)
    if not sweeps:
        widgets.demo_offer(url, key="explore_demo")
        return
    sweep = widgets.pick_sweep(sweeps, key="explore_sweep")
    key = state.version(sweep)
    if launcher.is_active(sweep):
        widgets.live_strip(url, sweep.id, key)
    trials = state.trials(url, key)
    if not any(t.status == "done" for t in trials):
        st.info("No finished trials in this sweep yet: the chart appears with the first one.")
        return
    _explore(url, sweep, trials)


def _explore(url: str, sweep: SweepRecord, trials: list[TrialRecord]) -> None:
    key = state.version(sweep)
    base = state.base_slos(url, key)
    throughput, latency = widgets.pick_axes(f"explore_{sweep.id}",
                                            *widgets.default_axes(sweep, base))
    chart, side = st.columns([3, 1])
    with side:
        colour_by = st.selectbox("Colour by", list(charts.COLOUR_OPTIONS), key=f"explore_colour_{sweep.id}",
                                 format_func=charts.COLOUR_OPTIONS.__getitem__)
        slos = _slo_controls(sweep.id, trials, base)
        axis = st.radio("Latency axis", chart_reading.AXIS_MODES, horizontal=True,
                        key=f"explore_axis_{sweep.id}",
                        help="auto: log when the points span more than 10x, so a few slow "
                             "outliers do not crush the rest against the axis")
        whole_grid = st.checkbox("Predicted frontier of the whole grid", key=f"explore_pred_{sweep.id}",
                                 help="every config x load simulated under the cost model fitted "
                                      "to this sweep's measured steps (a few seconds)")
    points = state.points(url, key, (throughput, latency, colour_by))
    is_whatif = set(slos) != set(base)
    if not is_whatif:
        slos = list(base)  # same order as the Recommend page: the same tie-breaks and words
    analysis = state.analysis(url, key)
    rec = (state.whatif(url, key, tuple(slos), state.objective(sweep)) if is_whatif
           else analysis.recommendation)
    labels = classify(points, throughput, latency)
    fig = charts.frontier_figure(points, labels, throughput, latency, rec.config, slos,
                                 colour_by=colour_by, latency_axis=axis)
    capacity_view.add_predictions(fig, trials, throughput, latency)
    if whole_grid:
        capacity_view.add_grid_prediction(fig, url, key, throughput, latency)
    # The sentence is the recommendation's, shown once below; the section draws the chart.
    capacity_view.capacity_section(url, sweep, f"explore_capacity_{sweep.id}", is_whatif,
                                   sentence=False)
    with chart:
        event = st.plotly_chart(fig, key=f"explore_chart_{sweep.id}", on_select="rerun",
                                selection_mode="points")
        st.caption(chart_reading.describe(fig, charts.COLOUR_OPTIONS[colour_by])
                   + " Click a point for its details."
                   + (" Roofline: fraction of the device's limit the local engine's steps reached "
                      "(decode vs memory bandwidth, prefill vs compute); blank where unknown."
                      if colour_by.startswith("roofline") else ""))
    _recommendation(rec, rec.explanation if is_whatif else capacity_sentence(analysis), is_whatif)
    chosen = _chosen(sweep.id, points, rec, event)
    _details(url, sweep, state.point_details(url, key, points[chosen]), slos)
    _table(points, labels, throughput, latency)
    capacity_view.prediction_table(trials, analysis.capacities)


def _slo_controls(sweep_id: int, trials: Sequence[TrialRecord], base: Sequence[SLO]) -> list[SLO]:
    st.markdown("**What-if SLOs**")
    st.caption("Move a threshold: the recommendation follows, nothing re-runs.")
    by_metric = {s.metric: s for s in base}
    slos = [slo for metric in SLO_METRICS
            if (slo := _slo_control(sweep_id, metric, by_metric.get(metric), trials))]
    if st.button("Reset to the sweep's SLOs", key=f"explore_reset_{sweep_id}"):
        for name in [k for k in st.session_state if str(k).startswith(f"slo_{sweep_id}_")]:
            del st.session_state[name]
        st.rerun()
    return slos


def _slo_control(sweep_id: int, metric: str, slo: SLO | None,
                 trials: Sequence[TrialRecord]) -> SLO | None:
    prefix = f"slo_{sweep_id}_{metric}"
    name = charts.LATENCY_NAMES[metric]
    if not st.checkbox(f"{name} SLO", value=slo is not None, key=f"{prefix}_on"):
        return None
    percentile = st.selectbox(f"{name} percentile", SLO_PERCENTILES, key=f"{prefix}_pct",
                              index=SLO_PERCENTILES.index(slo.percentile if slo else "p90"),
                              label_visibility="collapsed")
    top = _slider_top(trials, f"{metric}_{percentile}", slo)
    default = min(slo.max_ms if slo else top / 2, top)
    slider = f"{prefix}_max_{percentile}"
    if st.session_state.get(slider, 0.0) > top:  # the range moves as a sweep stores trials
        st.session_state[slider] = top
    max_ms = st.slider(f"max {percentile} {name} (ms)", 0.0, top, float(default), key=slider)
    return SLO(metric, percentile, max_ms)


def _slider_top(trials: Sequence[TrialRecord], key: str, slo: SLO | None) -> float:
    # Room to loosen the SLO past the slowest trial; a round number keeps the slider calm.
    worst = max((t.metrics.get(key) or 0.0 for t in trials), default=0.0)
    top = max(worst * 1.25, (slo.max_ms * 1.5) if slo else 0.0, 1.0)
    return float(f"{top:.2g}")


def _recommendation(rec: Recommendation, text: str, is_whatif: bool) -> None:
    head = "With your what-if SLOs: " if is_whatif else "Recommended: "
    text = head + widgets.md(text)
    if rec.feasible:
        st.success(text, icon=":material/star:")
    else:
        st.warning(text, icon=":material/warning:")


def _clicked(event) -> int | None:
    """The index (customdata[0]) of the clicked point; None for a click on anything else."""
    points = (event or {}).get("selection", {}).get("points", [])
    data = [p["customdata"] for p in points if p.get("customdata") is not None]
    if not data:
        return None
    # A list, or {"0": ..., "1": ...} when the figure sent customdata as a typed array.
    first = data[0].get("0") if isinstance(data[0], dict) else data[0][0]
    return int(first) if isinstance(first, (int, float)) else None


def _chosen(sweep_id: int, points: Sequence[ConfigPoint], rec: Recommendation, event) -> int:
    """The point whose details show: the clicked one, else the picker's, else the recommended."""
    key, last = f"explore_detail_{sweep_id}", f"explore_click_{sweep_id}"
    clicked = _clicked(event)
    if clicked is not None and clicked != st.session_state.get(last):
        st.session_state[key] = clicked  # a new click moves the picker
    st.session_state[last] = clicked
    if st.session_state.get(key) not in range(len(points)):
        configs = [p.config for p in points]
        st.session_state[key] = configs.index(rec.config) if rec.config in configs else 0
    return st.selectbox("Details for", range(len(points)), key=key,
                        format_func=lambda i: _point_label(points[i], rec))


def _point_label(point: ConfigPoint, rec: Recommendation) -> str:
    star = " (recommended)" if point.config == rec.config else ""
    return f"{point.config.label}{star}"


def _details(url: str, sweep: SweepRecord, point: ConfigPoint, slos: Sequence[SLO]) -> None:
    trial_id = point.trial_ids[0]
    if point.n > 1:
        trial_id = st.selectbox("Repetition", point.trial_ids, key=f"explore_rep_{sweep.id}",
                                format_func=lambda t: f"trial {t}")
    st.dataframe([_metric_row(point, k) for k in KEY_METRICS if k in point.mean],
                 hide_index=True)
    details = _trial_details(url, sweep, trial_id)
    where = widgets.where_it_ran(details)
    if where:
        st.caption(widgets.md(where))
    requests = state.requests(url, trial_id)
    if not requests:
        st.caption("This trial stored no requests.")
        return
    samples = latency_samples([charts.as_request_record(r) for r in requests])
    names = ["Latency distributions", "Request timeline", "Batch size over time", "SLOs over time"]
    extra = {"Server metrics": details.server_metrics, "By turn": details.ttft_ms_by_turn}
    extra = {name: value for name, value in extra.items() if value}
    tabs = st.tabs(names + list(extra))
    dist, timeline, batch, over_time = tabs[:4]
    _over_time(over_time, details)
    for tab, (name, value) in zip(tabs[4:], extra.items(), strict=True):
        if name == "Server metrics":
            _server_metrics(tab, value)
        else:
            _by_turn(tab, value, details.prefix_cache or PrefixCache())
    dist.plotly_chart(charts.latency_figure(samples, slos), key="explore_dist")
    timeline.plotly_chart(charts.timeline_figure(requests), key="explore_timeline")
    batch.plotly_chart(charts.batch_figure(requests, point.config.batch_size), key="explore_batch")
    batch.caption("Engine steps are not stored, so this counts requests admitted to the batch "
                  "and not yet done, from the request timestamps: the realised batch at any "
                  "moment, up to step granularity.")


def _trial_details(url: str, sweep: SweepRecord, trial_id: int) -> TrialDetails:
    trial = next((t for t in state.trials(url, state.version(sweep)) if t.trial_id == trial_id), None)
    return trial.details if trial is not None else TrialDetails()


def _over_time(tab, details: TrialDetails) -> None:
    series = details.timeseries
    if series is None or not series.t_s:
        tab.caption("This trial has no time series (it was measured before they were stored).")
        return
    tab.plotly_chart(charts_time.timeseries_figure(series), key="explore_over_time")
    tab.caption("Per window: the share of requests scheduled in it that met every SLO, the "
                "time-averaged number waiting for admission (bars: arrivals/s), and the "
                "time-averaged decode batch size.")
    trace = details.trace
    if trace is not None:
        tab.caption(f"Replayed {trace.requests_replayed} requests of {trace.trace}, trace "
                    f"window {trace.window_start_s:g}-{trace.window_end_s:g} s at "
                    f"{trace.speedup:g}x. {trace.attribution or ''}")


def _by_turn(tab, by_turn: dict, cache: PrefixCache) -> None:
    tab.plotly_chart(charts_time.turns_figure(by_turn), key="explore_by_turn")
    cached, prompt = cache.num_cached_tokens, cache.num_prompt_tokens
    hit = (f"{cached:,} of {prompt:,} prompt tokens came from the prefix cache ({cached / prompt:.1%})"
           if cache.num_reporting and prompt and cached is not None else
           cache.reason or "no request reported cached prompt tokens")
    tab.caption(f"Each turn re-sends the conversation so far: later turns have longer prompts, "
                f"which a prefix cache makes cheap. {hit}.")


def _server_metrics(tab, summary: ServerMetrics) -> None:
    tab.plotly_chart(charts_time.server_metrics_figure(summary), key="explore_server_metrics")
    counters = {k: v for k, v in (summary.counters or {}).items() if v is not None}
    said = [f"{k.replace('_', ' ')}: {v:g}" for k, v in counters.items()]
    if summary.prefix_cache_hit_rate is not None:
        said.append(f"prefix-cache hit rate {summary.prefix_cache_hit_rate:.1%}")
    tab.caption(f"The engine's own /metrics ({summary.url}), sampled during the trial"
                + (f"; over the trial: {', '.join(said)}" if said else "")
                + (f"; {summary.scrape_errors} scrapes failed" if summary.scrape_errors else "")
                + ".")


def _metric_row(point: ConfigPoint, key: str) -> dict:
    low, high = point.ci_low.get(key), point.ci_high.get(key)
    interval = "-" if low is None or high is None else f"{num(low)} - {num(high)}"
    return {"metric": charts.metric_label(key), "mean": num(point.mean.get(key)),
            "95% interval": interval}


def _table(points: Sequence[ConfigPoint], labels: Sequence[str], throughput: str,
           latency: str) -> None:
    with st.expander(f"All {len(points)} configs"):
        # Rounded numbers, not text: a click on a column header sorts them as numbers.
        st.dataframe([{"config": p.config.label, "class": c, "repetitions": p.n,
                       throughput: rounded(p.mean.get(throughput)),
                       latency: rounded(p.mean.get(latency)),
                       "saturated": p.saturated} for p, c in zip(points, labels, strict=True)],
                     hide_index=True)
