"""Run page: grid size and estimate before starting, inline validation, start/cancel/resume."""

from __future__ import annotations

from dashboard_helpers import MARKUP_NAME, leaf_after, page_test, plain, texts

from db.store import Store


def test_empty_store_shows_grid_size_and_estimate(db_url: str) -> None:
    app = page_test("run").run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Trials"] == "24"  # 2 policies x 3 batch sizes x 2 waits x 2 loads
    assert metrics["Estimated duration"].endswith(("s", "min", "h"))
    assert not app.button(key="run_start").disabled
    assert any("No sweeps yet" in c for c in texts(app.caption))


def test_invalid_list_is_shown_under_its_field(db_url: str) -> None:
    app = page_test("run").run()
    app.text_input(key="run_batch_sizes").input("1, x, 16").run()
    error = leaf_after(app, "Max batch sizes")
    assert error is not None and error.type == "error"
    assert "'x' is not a number" in plain(error.value)
    assert app.button(key="run_start").disabled
    assert not app.exception


def test_grid_error_names_the_field(db_url: str) -> None:
    app = page_test("run").run()
    app.text_input(key="run_concurrency").input("0, 8").run()
    error = leaf_after(app, "Concurrent users")
    assert error.type == "error" and "concurrency must be >= 1" in plain(error.value)
    app.multiselect(key="run_policies").set_value([]).run()
    assert leaf_after(app, "Batching policies").type == "error"


def test_open_loop_and_custom_model_inputs(db_url: str) -> None:
    app = page_test("run").run()
    app.radio(key="run_load_mode").set_value("rate").run()
    app.text_input(key="run_rate").input("-1").run()
    assert "rate must be > 0" in plain(leaf_after(app, "Arrival rates (requests/s)").value)
    app.selectbox(key="run_model_choice").set_value("Hugging Face id or local path...").run()
    app.text_input(key="run_model_other").input("   ").run()
    assert leaf_after(app, "Hugging Face id or local path").type == "error"


def test_start_queues_a_sweep_and_launches_one_worker(db_url, store: Store, launches) -> None:
    app = page_test("run").run()
    app.text_input(key="run_name").input("my sweep").run()
    app.button(key="run_start").click().run()
    assert not app.exception
    (sweep,) = store.list_sweeps()
    assert sweep.name == "my sweep" and sweep.status == "queued"
    assert launches.commands == [[launches.commands[0][0], "-m", "app.cli", "worker", "--db",
                                  db_url]]
    assert app.button(key="run_cancel")  # the live panel offers to cancel it
    app.button(key="run_cancel").click().run()
    assert store.get_sweep(sweep.id).status == "cancelled"


def test_demo_button_queues_the_demo_sweep(db_url, launches) -> None:
    page_test("run").run().button(key="run_demo").click().run()
    chat, batch = launches.specs  # one grid, two workloads
    assert (chat.load.profile, batch.load.profile) == ("chat", "batch")
    assert chat.target.model == "builtin:tiny" and chat.knobs.policies == ["static", "continuous"]


def test_results_show_status_escaped_and_frontier(db_url, results) -> None:
    app = page_test("run").run()
    assert not app.exception
    done = texts(app.success)
    assert any("is done" in t for t in done)
    # The markup name of the chat sweep is shown literally, never as bold, a link or colour.
    app.selectbox(key="run_sweep").set_value(results["chat"]).run()
    status = next(t for t in texts(app.success) if "is done" in t)
    assert "\\*\\*bold\\*\\*" in status and "\\[link\\]" in status and "\\:red" in status
    assert MARKUP_NAME not in status and MARKUP_NAME in plain(status)
    assert app.get("plotly_chart")


def test_failed_sweep_can_be_resumed(db_url, store: Store, results, launches) -> None:
    store.start_sweep(results["batch"], pid=0)
    store.finish_sweep(results["batch"], "failed", "worker died; resume it")
    app = page_test("run").run()
    app.selectbox(key="run_sweep").set_value(results["batch"]).run()
    assert any("worker died" in plain(t) for t in texts(app.error))
    app.button(key="run_resume").click().run()
    assert not app.exception
    status = store.get_sweep(results["batch"]).status
    assert status == "queued" or launches.commands  # requeued, or resumed in its own worker


def test_absolute_slos_replace_the_profiles_in_the_queued_sweep(db_url: str, launches) -> None:
    app = page_test("run").run()
    app.checkbox(key="run_slos_on").check().run()
    app.number_input(key="run_slo_ttft_ms").set_value(250.0).run()
    app.number_input(key="run_slo_tpot_ms").set_value(0.0).run()  # 0: no TPOT SLO
    app.button(key="run_start").click().run()
    assert not app.exception
    (spec,) = launches.specs
    assert spec.load.slos == {"ttft_ms": {"percentile": "p90", "max_ms": 250.0}}
