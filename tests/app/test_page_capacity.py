"""Capacity search on the dashboard: the Run page's "Find capacity" mode queues a search; a
search sweep shows its capacity sentence and chart; predicted points show their error."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from dashboard_helpers import page_test, plain, texts

from app.dashboard.synthetic import synthetic_requests
from common.records import TrialConfig
from db.store import Store
from experiments.analysis.metrics import compute_trial_metrics
from experiments.spec.grid import parse_spec
from experiments.spec.profiles import load_profile

N = 48


def test_find_capacity_mode_queues_a_search(db_url, store: Store, launches) -> None:
    app = page_test("run").run()
    app.radio(key="run_kind").set_value("capacity").run()
    app.radio(key="run_search_load").set_value("concurrency").run()
    app.number_input(key="run_budget").set_value(3.0).run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Trials (at most)"] == str(2 * 3 * 2 * 12)  # configs x max probes
    app.button(key="run_start").click().run()
    (spec,) = launches.specs
    assert spec.search is not None and spec.search.load == "concurrency"
    assert spec.search.budget_s == 180 and spec.load.concurrency is None and spec.load.rate is None
    assert store.list_sweeps()[0].grid["search"]["load"] == "concurrency"


def add_search_sweep(store: Store) -> int:
    """A finished rate search, replayable: continuous b4 passes up to 4 req/s, static b1 at 1."""
    spec = parse_spec({"profile": "chat", "policies": ["static", "continuous"], "batch_sizes": [4],
                       "max_wait_ms": [0], "requests": N,
                       "search": {"load": "rate", "predict": False, "start_load": 1.0}})
    sweep_id = store.create_sweep(
        name="search", model=spec.target.model, device="cpu", device_name="synthetic", dtype="float32",
        profile=load_profile("chat").model_dump(mode="json"), grid=spec.model_dump(mode="json"),
        seed=0, provenance={}, trials_total=spec.num_trials)
    capacity = {"continuous": 4.0, "static": 1.0}
    for policy, cap in capacity.items():
        rate = 1.0
        while rate <= 2 * cap:  # doubling from 1 to the first failure, then bisection below it
            _add(store, sweep_id, TrialConfig(policy, 4, 0.0, rate=rate), rate <= cap)
            rate *= 2
        for mid in ([6.0, 5.0, 4.5, 4.25] if policy == "continuous" else [1.5, 1.25, 1.12, 1.06]):
            _add(store, sweep_id, TrialConfig(policy, 4, 0.0, rate=mid), mid <= cap)
    store.finish_sweep(sweep_id, "done")
    return sweep_id


def _add(store: Store, sweep_id: int, config: TrialConfig, passes: bool) -> None:
    records = synthetic_requests(replace(config, concurrency=1, rate=None), N)
    metrics = compute_trial_metrics(records, [], [], None, False)
    prediction = {"predicted": {"output_tokens_per_s": metrics.output_tokens_per_s * 1.1,
                                "ttft_ms_p90": metrics.ttft_ms.p90},
                  "error": {"output_tokens_per_s": 0.1, "ttft_ms_p90": 0.0}}
    metrics = replace(metrics, slo_attainment=1.0 if passes else 0.5,
                      details={"prediction": prediction})
    store.add_trial(sweep_id, config, metrics, records, None, None)


def test_search_sweep_shows_capacities_and_prediction_error(db_url, store: Store) -> None:
    add_search_sweep(store)
    app = page_test("explore").run()
    assert not app.exception
    sentence = next(plain(s.value) for s in app.success if "carries" in s.value)
    assert sentence.startswith("Recommended: continuous b4 w0ms carries 4 req/s within the chat SLOs")
    assert "the best static config 1" in sentence
    assert any("whisker" in c for c in texts(app.caption))
    assert len(app.get("plotly_chart")) >= 2  # the capacity chart and the frontier


def test_explore_draws_the_whole_grid_as_predicted(db_url, results) -> None:
    app = page_test("explore").run()
    box = next(c for c in app.checkbox if c.label == "Predicted frontier of the whole grid")
    box.check().run()
    assert not app.exception
    figure = app.get("plotly_chart")[0].proto.spec
    assert "predicted frontier (whole grid)" in figure


def test_report_of_a_search_shows_the_capacity_table_and_sentence(db_url, store: Store) -> None:
    from html import unescape

    from app.dashboard import report, state

    sweep_id = add_search_sweep(store)
    analysis = state.analysis(db_url, state.version(store.get_sweep(sweep_id)))
    html = report.build_report(analysis)
    section = html[html.index("Capacity within the SLOs"):html.index("<h2>Recommendation")]
    # The sentence is the recommendation's (one answer), shown once in its section.
    answer = unescape(html[html.index("<h2>Recommendation"):])
    assert "continuous b4 w0ms carries 4 req/s within the chat SLOs" in answer
    assert "the best static config 1" in answer
    head, *rows = [[unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
                   for row in re.findall(r"<tr>(.*?)</tr>", section)]
    assert head == ["config", "capacity", "upper", "unit", "decided", "status", "reason", "trials"]
    # One row per config, replayed from the stored trials: capacity, unit, decided, probes.
    by_label = {r[0]: (r[1], r[3], r[4], r[5], r[7]) for r in rows}
    assert by_label == {"continuous b4 w0ms": ("4", "req/s", "yes", "decided", "8"),
                        "static b4 w0ms": ("1", "req/s", "yes", "decided", "6")}
    assert "capacity between 4 req/s and 4.25 req/s" in unescape(section)


def test_report_of_a_grid_reads_capacity_off_its_levels(db_url, results) -> None:
    from html import unescape

    from app.dashboard import report, state
    from experiments.analysis.queries import sweep_capacities

    store = state.get_store(db_url)
    html = unescape(report.build_report(
        state.analysis(db_url, state.version(store.get_sweep(results["chat"])))))
    section = html[html.index("Capacity within the SLOs"):html.index("<h2>Recommendation")]
    caps, _ = sweep_capacities(store, results["chat"])
    assert caps and all(c.unit == "users" for c in caps)
    assert "read off the grid's load levels" in section
    for c in caps:  # one row per server config, its reading
        assert f"<td>{c.capacity.reason}</td>" in section
    # A grid without SLOs has no capacity to read.
    batch = unescape(report.build_report(
        state.analysis(db_url, state.version(store.get_sweep(results["batch"])))))
    assert "Capacity within the SLOs" not in batch


def test_explore_names_a_grids_best_capacity(db_url, results) -> None:
    from app.dashboard import state
    from experiments.analysis.answer import best
    from experiments.analysis.queries import sweep_capacities

    store = state.get_store(db_url)
    app = page_test("explore").run()
    app.selectbox(key="explore_sweep").set_value(results["batch"]).run()
    assert not any("within the batch SLOs" in s.value for s in app.success)  # no SLOs: no capacity
    app.selectbox(key="explore_sweep").set_value(results["chat"]).run()
    assert not app.exception
    speed = [plain(s.value) for s in [*app.success, *app.info] if "within the chat SLOs" in s.value
             or "shown to carry" in s.value]
    caps, trials = sweep_capacities(store, results["chat"])
    top = best(caps, trials)
    assert len(speed) == 1 and "read off the grid's load levels" in speed[0]
    assert top is not None  # the synthetic chat grid: b4 and b16 meet 4 users, b1 only 1
    assert speed[0].startswith(
        f"Recommended: {top.config.server_label.replace('/', ' ')} carries 4 users")
    assert any("next level, which missed" in c for c in texts(app.caption))


def add_stopped_search(store: Store) -> int:
    """A rate search its budget stopped: continuous b4 passed 1 and 2 req/s (4 not measured),
    static b4 passed 1 and missed 2 (not bisected yet): both configs undecided."""
    spec = parse_spec({"profile": "chat", "policies": ["static", "continuous"], "batch_sizes": [4],
                       "max_wait_ms": [0], "requests": N,
                       "search": {"load": "rate", "predict": False, "start_load": 1.0,
                                  "budget_s": 60}})
    sweep_id = store.create_sweep(
        name="stopped search", model=spec.target.model, device="cpu", device_name="synthetic",
        dtype="float32", profile=load_profile("chat").model_dump(mode="json"),
        grid=spec.model_dump(mode="json"), seed=0, provenance={}, trials_total=spec.num_trials)
    for policy, rate, passes in [("continuous", 1.0, True), ("continuous", 2.0, True),
                                 ("static", 1.0, True), ("static", 2.0, False)]:
        _add(store, sweep_id, TrialConfig(policy, 4, 0.0, rate=rate), passes)
    store.finish_sweep(sweep_id, "done")
    return sweep_id


def test_a_budget_stopped_search_resumes_with_a_new_budget(db_url, store: Store, launches) -> None:
    from app import launcher

    sweep_id = add_stopped_search(store)
    app = page_test("run").run()
    assert not app.exception
    assert any("(2 of 2 configs undecided)" in plain(t) for t in texts(app.info))
    assert not [b for b in app.button if b.key == "run_resume"]  # a done grid's button: not here
    app.number_input(key="run_resume_budget").set_value(3.0).run()
    app.button(key="run_resume_search").click().run()
    assert not app.exception
    sweep = store.get_sweep(sweep_id)
    # Queued for the worker, which runs it as `tradeoff search --resume` does, with the new budget.
    assert sweep.status == "queued" and sweep.grid["search"]["budget_s"] == 180
    assert launches.commands == [launcher.worker_command(db_url)]
    assert len(store.list_trials(sweep_id)) == 4  # the stored trials are kept


def test_a_decided_search_offers_no_resume(db_url, store: Store) -> None:
    add_search_sweep(store)
    app = page_test("run").run()
    assert not app.exception
    assert not [b for b in app.button if b.key in ("run_resume_search", "run_resume")]


def test_report_and_explore_carry_the_honest_error_table(db_url, store: Store) -> None:
    from html import unescape

    from app.dashboard import report, state

    sweep_id = add_search_sweep(store)
    html = unescape(report.build_report(state.analysis(db_url, state.version(store.get_sweep(sweep_id)))))
    section = html[html.index("<h2>Prediction vs measurement"):]
    assert "Median |error|: tok/s 10%, p90 TTFT ms 0%" in section
    head = re.findall(r"<th>(.*?)</th>", section[section.index("<table>"):])[:11]
    assert head[:5] == ["trial", "config", "tok/s predicted", "tok/s measured", "tok/s error"]
    assert section.count("+10%") == len(store.list_trials(sweep_id))  # one row per measured trial
    app = page_test("explore").run()
    assert not app.exception
    assert any(e.label.startswith("Prediction error") for e in app.expander)


def test_the_predicted_frontier_carries_its_error_band() -> None:
    import plotly.graph_objects as go

    from app.dashboard.capacity_charts import add_predicted_frontier

    band = ({"lo": 0.8, "hi": 1.5, "n": 4}, {"lo": 0.7, "hi": 1.1, "n": 4})  # latency, throughput
    fig = add_predicted_frontier(go.Figure(), [(10.0, 100.0), (20.0, 200.0)], band=band)
    edges = {t.name: t for t in fig.data if "error band" in (t.name or "")}
    pessimistic, optimistic = fig.data[0], fig.data[1]
    assert len(edges) == 1 and optimistic.fill == "tonexty"
    assert list(pessimistic.x) == [15.0, 30.0] and list(pessimistic.y) == [70.0, 140.0]
    assert list(optimistic.x) == [8.0, 16.0] and list(optimistic.y) == pytest.approx([110.0, 220.0])
