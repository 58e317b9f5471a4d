"""How tradeoff launches a real engine: argv and environment, the extra arguments it refuses, the
one-line start failures read from real vLLM logs, and what a trial records of its server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from common.records import TrialConfig
from experiments.spec.grid import GridError, parse_spec
from experiments.targets.engine_logs import fix_for, root_cause, start_failure, strip_prefix
from experiments.targets.engines import EngineUnavailableError, check_launch, preset
from experiments.targets.server_metrics import hit_rate
from experiments.targets.servers import LOG_DIR_ENV, SweepServers, log_root

LOGS = Path(__file__).parent / "logs"
C16 = TrialConfig("continuous", 16, 0.0, concurrency=4)
BUDGET = TrialConfig("continuous", 4, 0.0, concurrency=4, max_num_batched_tokens=256)


def test_vllm_from_another_environment_runs_its_module_with_the_model_as_a_flag():
    argv = preset("vllm").command("/m", BUDGET, 8001, python="/venv/bin/python",
                                  extra_args=["--dtype", "float32"])
    assert argv == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m",
                    "--host", "127.0.0.1", "--port", "8001", "--max-num-seqs", "4",
                    "--max-num-batched-tokens", "256", "--enable-chunked-prefill",
                    "--dtype", "float32"]


def test_without_a_python_the_preset_keeps_its_own_command_and_extras_go_last():
    argv = preset("vllm").command("/m", C16, 9, extra_args=["--enforce-eager"])
    assert argv[:3] == ["vllm", "serve", "/m"] and argv[-1] == "--enforce-eager"
    sglang = preset("sglang").command("/m", C16, 9, python="/py")
    assert sglang[:5] == ["/py", "-m", "sglang.launch_server", "--model-path", "/m"]


@pytest.mark.parametrize("args, owner", [
    (["--max-num-seqs", "8"], "--batch-sizes"),
    (["--max-num-batched-tokens=512"], "--max-num-batched-tokens"),
    (["--port", "1"], "where it listens"),
])
def test_extra_arguments_may_not_set_what_the_grid_sets(args: list[str], owner: str):
    with pytest.raises(ValueError, match=f"set by tradeoff.*{owner}"):
        preset("vllm").check_extra_args(args)


def test_launch_settings_need_a_server_that_takes_them():
    with pytest.raises(ValueError, match="engine_args: extra arguments go to an --engine"):
        check_launch(None, True, ["--x"], {}, None)
    with pytest.raises(ValueError, match="engine_python"):
        check_launch(None, True, [], {}, "/py")
    with pytest.raises(ValueError, match="engine_env: only a server tradeoff starts"):
        check_launch(None, False, [], {"A": "1"}, None)
    with pytest.raises(ValueError, match="'A-B' is not a variable name"):
        check_launch("vllm", True, [], {"A-B": "1"}, None)
    check_launch(None, True, [], {"A": "1"}, None)  # a --server-cmd server takes an environment


def test_the_spec_refuses_bad_launch_settings_in_one_line():
    base = {"concurrency": [1], "policies": ["continuous"], "max_wait_ms": [0], "engine": "vllm"}
    with pytest.raises(GridError, match="--max-num-seqs is set by tradeoff"):
        parse_spec({**base, "engine_args": ["--max-num-seqs", "2"]})
    spec = parse_spec({**base, "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "engine_python": "/py"})
    assert spec.target.engine_env == {"VLLM_CPU_KVCACHE_SPACE": "1"} and spec.target.engine_python == "/py"


def test_engine_python_must_exist_and_import_the_engine(tmp_path: Path):
    with pytest.raises(EngineUnavailableError, match="no such executable"):
        preset("vllm").check_available(str(tmp_path / "python"))
    with pytest.raises(EngineUnavailableError, match="cannot import 'vllm'; install it there"):
        preset("vllm").check_available(sys.executable)  # this environment has no vllm
    with pytest.raises(EngineUnavailableError, match="a binary"):
        preset("llamacpp").check_available(sys.executable)


def test_vllms_cpu_memory_failure_names_its_cause_and_the_variable_that_fixes_it():
    log = (LOGS / "vllm_cpu_memory.log").read_text()
    cause = root_cause(log)
    assert cause is not None and cause.startswith("ValueError: Available memory on node 0")
    assert "See root cause above" not in cause  # vLLM's own last line is only a wrapper
    line = start_failure("vllm server for continuous/b4/w0ms", 1, log, "/logs/x.log")
    assert "\n" not in line
    assert line.startswith("vllm server for continuous/b4/w0ms exited with code 1; ValueError")
    assert "fix: give the CPU KV cache a size: --engine-env VLLM_CPU_KVCACHE_SPACE=GiB" in line
    assert line.endswith("log: /logs/x.log")


def test_a_bad_argument_is_argparses_line():
    log = (LOGS / "vllm_bad_argument.log").read_text()
    assert root_cause(log) == "error: unrecognized arguments: --bogus-flag"
    assert fix_for(root_cause(log)).startswith("fix --engine-args")


def test_a_silent_hang_says_how_long_it_waited_and_what_to_raise():
    line = start_failure("s", None, "# argv\nloading weights\n", "/l", timeout_s=90)
    assert line == ("s did not answer /health within 90 s; last output: loading weights; "
                    "fix: give it longer with --server-timeout SECONDS; log: /l")
    assert "it printed nothing" in start_failure("s", 3, "", "/l")


def test_log_prefixes_are_stripped():
    line = "(VllmWorker-0 pid=3641) ERROR 12-06 06:59:04 [multiproc_executor.py:953] ValueError: x"
    assert strip_prefix(line) == "ValueError: x"


def test_logs_go_beside_a_sqlite_store_unless_told(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(LOG_DIR_ENV, raising=False)
    assert log_root(str(tmp_path / "t.db")) == tmp_path / "tradeoff-logs"
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "elsewhere"))
    assert log_root(None) == tmp_path / "elsewhere"


def test_a_trial_records_its_servers_command_version_start_time_and_log(tmp_path: Path):
    spec = parse_spec({"concurrency": [1], "server_cmd": "srv --port {port} --bs {batch_size}",
                       "engine_env": {"K": "v w"}})
    servers = SweepServers(spec, 7, tmp_path)
    assert servers.launch_facts() == {}  # nothing started yet
    server = servers.process(C16)
    server.start_s = 12.3456
    servers.started("1.2.3", "vllm")
    facts = servers.launch_facts()
    assert facts["engine"] == {"name": "vllm", "version": "1.2.3",
                               "command": f"K='v w' srv --port {server.port} --bs 16"}
    assert facts["server_start_s"] == 12.346
    assert Path(facts["server_log"]).parent == tmp_path / "sweep-7"
    assert not servers.died()  # never started: not dead either


def test_prefix_cache_hit_rate_is_hits_over_queries_and_unknown_without_queries():
    assert hit_rate({"prefix_cache_queries": 200.0, "prefix_cache_hits": 50.0}) == 0.25
    assert hit_rate({"prefix_cache_queries": 0.0, "prefix_cache_hits": 0.0}) is None
    assert hit_rate({}) is None


def test_the_measured_command_relaunches_on_a_fixed_port_with_its_environment():
    from experiments.export.server import relaunch_command

    measured = "K='v w' VLLM_CPU_KVCACHE_SPACE=1 /py -m vllm.x --model '/m dir' --port 41234 --dtype float32"
    assert relaunch_command(measured, 8000) == (
        "K='v w' VLLM_CPU_KVCACHE_SPACE=1 /py -m vllm.x --model '/m dir' --port 8000 --dtype float32")


def test_exports_name_the_started_engine_as_where_figures_came_from():
    from experiments.export.server import measured_on

    started = {"name": "vllm", "version": "0.32.0", "command": "x"}
    device = "server per config from --engine vllm"
    assert measured_on({"engine": started, "device": device}) == f"{device} (vllm 0.32.0)"
    assert measured_on({"engine": None, "device": "cpu"}) == "tradeoff's engine"


def test_the_server_a_config_ran_on_is_read_from_its_trials():
    from common.records import TrialRecord
    from experiments.analysis.queries import measured_server

    engine = {"name": "vllm", "version": "0.32.0", "command": "c16"}
    other = TrialConfig("continuous", 4, 0.0, concurrency=4)

    def trial(config: TrialConfig, status: str, details: dict) -> TrialRecord:
        return TrialRecord(1, 1, config, status, {}, details=details)

    trials = [trial(other, "done", {"provenance": {"engine": {**engine, "command": "c4"}}}),
              trial(C16, "failed", {}), trial(TrialConfig("continuous", 16, 0.0, concurrency=8),
                                              "done", {"provenance": {"engine": engine}})]
    assert measured_server(trials, C16) == engine  # the same server config at another load
    assert measured_server(trials, None) is None


def test_a_pydantic_validation_failure_says_which_value_was_wrong():
    log = (LOGS / "vllm_budget_below_batch.log").read_text()
    line = start_failure("vllm server for continuous/b4/w0ms/t2", 1, log, "/l")
    assert "max_num_batched_tokens (2) must be greater than or equal to max_num_seqs (4)" in line
    assert "fix: give --max-num-batched-tokens values no smaller than the batch sizes" in line


def test_server_metrics_fill_what_the_client_could_not_see():
    from dataclasses import replace

    from experiments.analysis.metrics import compute_trial_metrics
    from experiments.targets.server_metrics import with_server_metrics

    base = compute_trial_metrics([], [], [], None, False)
    summary = {"stats": {"running": {"mean": 3.5, "max": 4.0}}, "prefix_cache_hit_rate": 0.25}
    filled = with_server_metrics(base, summary)
    assert (filled.mean_batch_size, filled.prefix_cache_hit_rate) == (3.5, 0.25)
    assert "running-requests gauge" in filled.details.mean_batch_size_from
    seen = with_server_metrics(replace(base, mean_batch_size=2.0, prefix_cache_hit_rate=0.5), summary)
    assert (seen.mean_batch_size, seen.prefix_cache_hit_rate) == (2.0, 0.5)  # the client's own wins


def test_prefix_caching_is_a_server_knob_each_engine_sets_its_own_way():
    on = TrialConfig("continuous", 8, 0.0, concurrency=4, prefix_caching=True)
    off = TrialConfig("continuous", 8, 0.0, concurrency=4, prefix_caching=False)
    assert preset("vllm").command("/m", on, 1)[-1] == "--enable-prefix-caching"
    assert preset("vllm").command("/m", off, 1)[-1] == "--no-enable-prefix-caching"
    assert "--disable-radix-cache" in preset("sglang").command("/m", off, 1)
    assert "--disable-radix-cache" not in preset("sglang").command("/m", on, 1)
    assert (on.server_label, off.server_label) == ("continuous/b8/w0ms/pc", "continuous/b8/w0ms/nopc")
    with pytest.raises(ValueError, match="--no-enable-prefix-caching is set by tradeoff.*--prefix-caching"):
        preset("vllm").check_extra_args(["--no-enable-prefix-caching"])
    base = {"concurrency": [1], "policies": ["continuous"], "max_wait_ms": [0]}
    with pytest.raises(GridError, match="tgi has no setting for prefix_caching"):
        parse_spec({**base, "engine": "tgi", "prefix_caching": [True]})
    own = parse_spec({**base, "batch_sizes": [4], "prefix_caching": [True, False]})
    assert [c.prefix_caching for c in own.trial_configs()] == [True, False]  # its engine has one
    spec = parse_spec({**base, "engine": "vllm", "batch_sizes": [4], "prefix_caching": [True, False]})
    assert [c.prefix_caching for c in spec.trial_configs()] == [True, False]


def test_estimates_use_the_start_times_and_step_costs_earlier_sweeps_recorded():
    from types import SimpleNamespace

    from common.records import TrialRecord
    from engine.simulate import CostModel
    from experiments.predict.estimate import estimate_sweep_s
    from experiments.predict.simulate import cost_to_dict
    from experiments.spec.profiles import load_profile
    from experiments.targets.servers import recorded_calibration, recorded_starts

    spec = parse_spec({"engine": "vllm", "model": "/m", "policies": ["continuous"], "max_wait_ms": [0],
                       "batch_sizes": [4, 16], "concurrency": [1, 8], "requests": 16})
    fast = CostModel(0.002, 1e-5, 0.002, 1e-4, 0.0)
    calibrated = {"prediction": {"calibration": {"cost_model": cost_to_dict(fast)}},
                  "provenance": {"server_start_s": 40.0, "server_log": "/l/1"}}
    other = SimpleNamespace(id=1, grid={"engine": "sglang", "server_cmd": None}, model="/m")
    same = SimpleNamespace(id=2, grid={"engine": "vllm", "server_cmd": None}, model="/m")
    trials = {1: [], 2: [TrialRecord(1, 2, C16, "done", {}, details=calibrated)]}
    store = SimpleNamespace(list_sweeps=lambda: [other, same], list_trials=lambda i: trials[i])
    assert recorded_starts(store, spec) == [40.0]
    assert recorded_calibration(store, spec) == fast
    prior = estimate_sweep_s(spec, load_profile("chat"))
    informed = estimate_sweep_s(spec, load_profile("chat"), [40.0], fast)
    assert prior >= 2 * 60 and informed < prior  # 2 starts at the prior 60 s, then at 40 s
    assert 2 * 40 <= informed < 2 * 40 + 0.5 * (prior - 2 * 60)
    eager = parse_spec({**spec.model_dump(), "engine_args": ["--enforce-eager"]})
    assert recorded_starts(store, eager) == []  # another command line: another server


def test_server_cpus_pin_every_server_process_and_the_client_gets_the_rest(tmp_path: Path):
    import os

    from app.engine_options import parse_cpus
    from app.errors import BadInput
    from experiments.targets.external import ServerProcess, pinned

    assert parse_cpus("0") == [0] and parse_cpus("2-3,0,3") == [0, 2, 3]
    for bad in ("a", "3-1", ""):
        with pytest.raises(BadInput, match="--server-cpus"):
            parse_cpus(bad)
    assert pinned(["srv", "--port", "1"], None) == ["srv", "--port", "1"]
    assert pinned(["srv"], [1, 0, 1]) == ["taskset", "-c", "0,1", "srv"]
    server = ServerProcess("srv --port {port}", C16, cpus=[0], log_path=tmp_path / "l.log")
    assert server.command.startswith("taskset -c 0 srv --port ")  # what the export relaunches
    with pytest.raises(GridError, match="server_cpus: pins a server tradeoff starts"):
        parse_spec({"concurrency": [1], "server_cpus": [0]})
    spec = parse_spec({"engine": "vllm", "model": "/m", "policies": ["continuous"], "max_wait_ms": [0],
                       "concurrency": [1], "server_cpus": [0]})
    before = os.sched_getaffinity(0)
    try:
        servers = SweepServers(spec, 1, tmp_path)
        client = servers.pin_client()
        if len(before) > 1 and 0 in before:  # the client leaves CPU 0 to the server
            assert client == sorted(before - {0}) and os.sched_getaffinity(0) == before - {0}
            assert servers.launch_facts() == {}  # no server yet: nothing to record
        else:
            assert client is None and os.sched_getaffinity(0) == before
    finally:
        os.sched_setaffinity(0, before)
