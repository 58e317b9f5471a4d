"""Run page: the executor choice (local or Ray), its address check, and what gets queued."""

from __future__ import annotations

import socket

from dashboard_helpers import page_test, plain

from db.store import Store


def test_unreachable_ray_address_is_shown_and_blocks_start(db_url: str) -> None:
    app = page_test("run").run()
    app.radio(key="run_executor").set_value("ray").run()
    app.text_input(key="run_ray_address").input("127.0.0.1:1").run()
    assert not app.exception
    assert any("no Ray head answers there" in plain(e.value) for e in app.error)
    assert app.button(key="run_start").disabled


def test_ray_executor_is_queued_with_its_address(db_url, store: Store, launches) -> None:
    with socket.socket() as head:  # anything answering TCP passes the address check
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = f"127.0.0.1:{head.getsockname()[1]}"
        app = page_test("run").run()
        app.radio(key="run_executor").set_value("ray").run()
        app.text_input(key="run_ray_address").input(address).run()
        app.button(key="run_start").click().run()
    assert not app.exception
    (spec,) = launches.specs
    assert spec.execution.executor == "ray" and spec.execution.ray_address == address


def test_where_a_trial_ran_in_words() -> None:
    from app.dashboard.widgets import where_it_ran

    ray = {"executor": "ray", "worker": 1, "node": "gpu-3", "device": "cuda", "device_name": "H100",
           "gpu_ids": ["0"], "attempt": 2}
    assert where_it_ran({"provenance": ray}) == (
        "Ran on Ray worker 1 (node gpu-3, H100, GPUs 0), attempt 2 (its first worker was lost).")
    local = {"node": "vm", "device": "cpu", "device_name": None,
             "replicas": {"replicas": 2, "placements": ["cpu:0", "cpu:1"], "router": "round_robin"}}
    assert where_it_ran({"provenance": local}) == (
        "Ran on this engine (node vm, cpu); 2 replicas on cpu:0, cpu:1 behind round_robin.")
    assert where_it_ran({}) is None


def test_replicas_and_routers_are_sweep_axes(db_url, store: Store, launches) -> None:
    app = page_test("run").run()
    app.text_input(key="run_replicas").input("1, 2").run()
    app.multiselect(key="run_routers").set_value(["round_robin", "least_outstanding"]).run()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Trials"] == "72"  # 24 one-replica trials x (1 + 2 routers)
    app.button(key="run_start").click().run()
    assert not app.exception
    (spec,) = launches.specs
    assert spec.knobs.replicas == [1, 2] and spec.knobs.routers == ["round_robin", "least_outstanding"]


def test_bad_replica_count_is_shown_under_its_field(db_url: str) -> None:
    app = page_test("run").run()
    app.text_input(key="run_replicas").input("0, 2").run()
    assert any("replica count must be >= 1" in plain(e.value) for e in app.error)
    assert app.button(key="run_start").disabled


def _engine_page(*, waits: str = "0", policies: tuple[str, ...] = ("continuous",)):
    app = page_test("run").run()
    app.radio(key="run_executor").set_value("engine").run()
    app.selectbox(key="run_engine").set_value("vllm").run()
    app.multiselect(key="run_policies").set_value(list(policies)).run()
    app.text_input(key="run_waits").input(waits).run()
    return app


def test_an_engine_not_installed_here_is_said_and_blocks_start(db_url: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    app = _engine_page()
    assert not app.exception
    assert any("'vllm' is not on PATH; install it (pip install vllm; on a CPU: .ci/vllm.sh)" in plain(e.value)
               for e in app.error)
    assert app.button(key="run_start").disabled


def test_an_engine_lacking_a_knob_says_which_under_the_run_on_field(db_url: str, tmp_path,
                                                                    monkeypatch) -> None:
    _fake_vllm_on_path(tmp_path, monkeypatch)
    app = _engine_page(waits="0, 10", policies=("static", "continuous"))
    errors = [plain(e.value) for e in app.error]
    assert any("vllm has no setting for max_wait_ms" in e and "policies other than continuous" in e
               for e in errors), errors
    assert app.button(key="run_start").disabled


def test_an_installed_engine_is_queued_as_a_server_per_config(db_url: str, store: Store, launches,
                                                              tmp_path, monkeypatch) -> None:
    _fake_vllm_on_path(tmp_path, monkeypatch)
    app = _engine_page()
    app.text_input(key="run_engine_args").input("--max-model-len 2048 --dtype 'float32'").run()
    app.text_input(key="run_engine_env").input("VLLM_CPU_KVCACHE_SPACE=2, A=b=c").run()
    assert not app.error
    assert any("No duration estimate" in c.value and "once per config (3)" in c.value for c in app.caption)
    app.button(key="run_start").click().run()
    assert not app.exception
    (spec,) = launches.specs
    assert (spec.target.engine, spec.execution.executor, spec.knobs.policies, spec.knobs.batch_sizes) == (
        "vllm", "local", ["continuous"], [1, 4, 16])
    assert spec.target.engine_args == ["--max-model-len", "2048", "--dtype", "float32"]
    assert spec.target.engine_env == {"VLLM_CPU_KVCACHE_SPACE": "2", "A": "b=c"}


def test_a_search_offers_engines_but_not_ray(db_url: str) -> None:
    app = page_test("run").run()
    app.radio(key="run_kind").set_value("capacity").run()
    from app.dashboard.forms import EXECUTORS

    assert app.radio(key="run_executor").options == [EXECUTORS["local"], EXECUTORS["engine"]]


def _fake_vllm_on_path(tmp_path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text("#!/bin/sh\nexit 1\n")  # never started: the page only checks PATH
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_the_engines_launch_fields_are_checked_before_start(db_url: str, tmp_path, monkeypatch) -> None:
    _fake_vllm_on_path(tmp_path, monkeypatch)
    app = _engine_page()
    app.text_input(key="run_engine_args").input("--max-num-seqs 4").run()
    errors = [plain(e.value) for e in app.error]
    assert any("--max-num-seqs is set by tradeoff for each server config (from --batch-sizes)" in e
               for e in errors), errors
    assert app.button(key="run_start").disabled
    app.text_input(key="run_engine_args").input("--enforce-eager").run()
    app.text_input(key="run_engine_env").input("VLLM_CPU_KVCACHE_SPACE").run()
    assert any("server environment 'VLLM_CPU_KVCACHE_SPACE': give NAME=VALUE" in plain(e.value)
               for e in app.error)
    app.text_input(key="run_engine_env").input("VLLM_CPU_KVCACHE_SPACE=2").run()
    app.text_input(key="run_engine_python").input(str(tmp_path / "no-python")).run()
    assert any("no such executable" in plain(e.value) for e in app.error)
    assert app.button(key="run_start").disabled
