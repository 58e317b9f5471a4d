"""Explore page: the Pareto chart, what-if SLOs, details of one config, the empty state."""

from __future__ import annotations

import json
import math
import re

import pytest
from dashboard_helpers import page_test, plain, texts

from app.dashboard import state
from experiments.analysis.queries import analyse


def _chart(app, index: int = 0) -> dict:
    return json.loads(app.get("plotly_chart")[index].proto.spec)


def test_empty_store_offers_the_demo_sweep(db_url: str, launches) -> None:
    app = page_test("explore").run()
    assert any("demo sweep" in t for t in texts(app.info))
    app.button(key="explore_demo").click().run()
    assert not app.exception
    assert [s.name for s in launches.specs] == ["demo: chat, batching trade-off",
                                                "demo: batch, batching trade-off"]
    assert any("No finished trials" in t for t in texts(app.info))  # the queued demo sweep


def test_chart_has_policies_frontier_recommendation_and_error_bars(db_url, results) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    assert not app.exception
    spec = _chart(app)
    names = [t.get("name") for t in spec["data"]]
    assert {"static", "continuous", "Pareto frontier", "recommended"} <= set(names)
    static = spec["data"][names.index("static")]
    assert static["error_y"]["array"]  # 2 repetitions: 95% intervals
    assert spec["layout"]["xaxis"]["title"]["text"] == "p90 TTFT (ms)"
    assert spec["layout"]["yaxis"]["title"]["text"].startswith("Goodput")
    assert any(plain(t).startswith("Recommended: ") and "within the chat SLOs" in plain(t)
               for t in texts(app.success))


def test_axes_choice_changes_the_chart(db_url, results) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    prefix = f"explore_{results['chat']}"
    app.selectbox(key=f"{prefix}_thr").set_value("requests_per_s").run()
    app.selectbox(key=f"{prefix}_lat").set_value("e2e_ms").run()
    app.selectbox(key=f"{prefix}_pct").set_value("p99").run()
    layout = _chart(app)["layout"]
    assert layout["xaxis"]["title"]["text"] == "p99 E2E (ms)"
    assert layout["yaxis"]["title"]["text"] == "Request throughput (req/s)"


def test_whatif_slo_moves_the_recommendation(db_url, results) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    before = [t for t in texts(app.success) if "carries" not in t]  # not the capacity reading
    chat = results["chat"]
    app.slider(key=f"slo_{chat}_tpot_ms_max_p90").set_value(0.1).run()  # nothing meets it
    assert not app.exception
    assert any("no config was shown to carry load" in plain(t) for t in texts(app.warning))
    app.checkbox(key=f"slo_{chat}_tpot_ms_on").uncheck().run()
    app.checkbox(key=f"slo_{chat}_ttft_ms_on").uncheck().run()  # no SLOs: the knee
    after = texts(app.success)
    assert after and after != before and "knee" in plain(after[0])
    # The grid's capacity reading stays under the sweep's own SLOs, and says so.
    assert any(plain(t).startswith("The chart below is under the sweep's own SLOs, not the what-if ")
               and "carries 4 users" in plain(t) for t in texts(app.info))


def test_details_show_distributions_timeline_and_batch(db_url, results) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    picker = app.selectbox(key=f"explore_detail_{results['chat']}")
    picker.set_value(picker.options.index(picker.options[-1])).run()
    assert not app.exception
    assert [t.label for t in app.tabs] == ["Latency distributions", "Request timeline",
                                           "Batch size over time", "SLOs over time"]
    layouts = [c["layout"] for c in map(json.loads, (c.proto.spec for c in app.get("plotly_chart")))]
    titles = [lay.get("xaxis", {}).get("title", {}).get("text") for lay in layouts]
    assert "time since trial start (ms)" in titles
    # The trial's time series: three stacked panels on one time axis.
    bottom = [lay.get("xaxis3", {}).get("title", {}).get("text") or "" for lay in layouts]
    assert any(t.startswith("Trial time (s)") for t in bottom)
    assert app.selectbox(key=f"explore_rep_{results['chat']}")  # 2 repetitions to pick from


def test_whatif_under_the_sweeps_own_slos_is_the_recommendation(db_url, store, results) -> None:
    sweep = store.get_sweep(results["chat"])
    key = state.version(sweep)
    slos = tuple(state.base_slos(db_url, key))
    whatif = state.whatif(db_url, key, slos, "max_goodput")
    own = analyse(store, sweep).recommendation
    assert (whatif.config, whatif.explanation, whatif.feasible) == \
        (own.config, own.explanation, own.feasible)


def test_clicked_point_index_from_either_customdata_shape() -> None:
    from app.dashboard.explore import _clicked

    as_list = {"selection": {"points": [{"customdata": [3, 0.5]}]}}
    as_typed = {"selection": {"points": [{"customdata": {"0": 4, "1": 0.5}}]}}
    on_line = {"selection": {"points": [{"curve_number": 2}]}}
    assert (_clicked(as_list), _clicked(as_typed), _clicked(on_line), _clicked(None)) == \
        (3, 4, None, None)


def test_colour_option_changes_the_colour_bar(db_url, results) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    app.selectbox(key=f"explore_colour_{results['chat']}").set_value("roofline_decode").run()
    assert not app.exception
    bars = [t["marker"]["colorbar"]["title"]["text"] for t in _chart(app)["data"]
            if t.get("marker", {}).get("showscale")]
    assert bars == ["decode roofline fraction"]


def test_rejudging_stored_requests_under_the_sweeps_own_slos_gives_its_attainment(store, results) -> None:
    import pytest

    from experiments.analysis.queries import rejudge, stored_slos

    trials = store.list_trials(results["chat"])
    again = rejudge(trials, stored_slos(trials, store), store.get_requests)
    done = [(t, a) for t, a in zip(trials, again, strict=True) if t.status == "done"]
    assert done and all(a.metrics["slo_attainment"] == pytest.approx(t.metrics["slo_attainment"])
                        for t, a in done)


SERVER_METRICS = {"url": "http://127.0.0.1:1/metrics", "interval_s": 0.5, "t_s": [0.0, 0.5, 1.0],
                  "series": {"running": [1.0, 4.0, 3.0], "waiting": [0.0, 2.0, 0.0],
                             "kv_usage": [None, None, None]},
                  "stats": {}, "counters": {"preemptions": 0.0, "prefix_cache_queries": 120.0},
                  "prefix_cache_hit_rate": 0.25, "scrape_errors": 0}
STARTED = {"node": "vm", "device": "server", "server_start_s": 31.4, "server_log": "/logs/1.log",
           "engine": {"name": "vllm", "version": "0.32.0", "command": "PY -m vllm... --max-num-seqs 4"}}


def test_a_started_engines_trial_shows_its_command_and_its_own_metrics(db_url, results, store) -> None:
    for trial in store.list_trials(results["chat"]):
        store.set_trial_details(trial.trial_id, {**trial.details.to_dict(), "server_metrics": SERVER_METRICS,
                                                 "provenance": STARTED})
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    assert not app.exception
    shown = [plain(t) for t in texts(app.caption) + texts(app.markdown) + texts(app.info)]
    assert any("Ran on vllm 0.32.0 started by tradeoff, started in 31 s" in t for t in shown)
    assert any("The engine's own /metrics" in t and "prefix-cache hit rate 25.0%" in t for t in shown)
    figure = next(json.loads(c.proto.spec) for c in app.get("plotly_chart")
                  if "explore_server_metrics" in c.proto.id)
    assert [t["name"] for t in figure["data"]] == ["Running requests", "Waiting requests"]  # no KV gauge


def test_a_multiturn_trial_shows_ttft_by_turn_and_its_cache_hits(db_url, results, store) -> None:
    by_turn = {"1": {"p50": 20.0, "p90": 25.0, "count": 8}, "2": {"p50": 35.0, "p90": 50.0, "count": 6}}
    cache = {"num_cached_tokens": 300, "num_prompt_tokens": 1200, "num_reporting": 14,
             "num_requests": 14, "reason": None}
    for trial in store.list_trials(results["chat"]):
        store.set_trial_details(trial.trial_id, {**trial.details.to_dict(), "ttft_ms_by_turn": by_turn,
                                                 "prefix_cache": cache})
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    assert not app.exception
    assert any("300 of 1,200 prompt tokens came from the prefix cache (25.0%)" in plain(t)
               for t in texts(app.caption))
    figure = next(json.loads(c.proto.spec) for c in app.get("plotly_chart")
                  if "explore_by_turn" in c.proto.id)
    assert [t["name"] for t in figure["data"]] == ["TTFT p50", "TTFT p90"]
    assert figure["data"][1]["y"] == [25.0, 50.0]


def test_latency_axis_goes_log_when_points_span_more_than_ten_x(db_url, results) -> None:
    # The chat grid's batch-1 configs at 16 users queue ~100x longer than the fast points: on a
    # linear axis those crush the rest against it.
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    layout = _chart(app)["layout"]
    assert layout["xaxis"]["type"] == "log"
    slo = next(a for a in layout["annotations"] if a["text"].startswith("SLO"))
    # Above the plot area (clear of the star), at log10 of the threshold on the log axis.
    assert (slo["yref"], slo["y"], slo["yanchor"]) == ("paper", 1, "bottom")
    assert slo["x"] == pytest.approx(math.log10(60.0)) and slo["text"] == "SLO 60 ms"
    caption = next(t for t in texts(app.caption) if t.startswith("Colour:"))
    assert "Latency on a log scale" in caption
    app.radio(key=f"explore_axis_{results['chat']}").set_value("linear").run()
    assert _chart(app)["layout"]["xaxis"]["type"] == "linear"
    caption = next(t for t in texts(app.caption) if t.startswith("Colour:"))
    assert "log scale" not in caption


def test_caption_describes_only_the_lines_drawn(db_url, results, store) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    caption = next(t for t in texts(app.caption) if t.startswith("Colour:"))
    frontier = next(t for t in _chart(app)["data"] if t.get("name") == "Pareto frontier")
    assert frontier["line"]["dash"] == "dot" and "dotted line: the measured Pareto frontier" in caption
    assert "star: recommended" in caption
    assert "predicted" not in caption and "dashed line" not in caption  # no prediction stored
    for t in store.list_trials(results["chat"]):  # each trial as predicted before it ran
        predicted = {k: t.metrics[k] for k in ("goodput_rps", "ttft_ms_p90")}
        store.set_trial_details(t.trial_id, {**t.details.to_dict(), "prediction": {"predicted": predicted}})
    state.trials.clear()  # details changed under the same sweep version
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    caption = next(t for t in texts(app.caption) if t.startswith("Colour:"))
    assert "dashed line: the frontier as predicted before measuring" in caption


def test_details_table_has_three_digits_and_dashes_for_unknowns(db_url, results) -> None:
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    table = next(d.value for d in app.dataframe if "95% interval" in d.value.columns)
    means = dict(zip(table["metric"], table["mean"], strict=True))
    assert all(re.fullmatch(r"-|\d+|\d\.\d{1,2}|\d\d\.\d|0\.\d+(e-\d+)?", v) for v in means.values()), means
    assert all(len(v.replace("0.", "").lstrip("0")) <= 4 for v in means.values())
    assert means["Decode roofline (fraction of the memory-bandwidth bound)"] == "-"
