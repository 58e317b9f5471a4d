"""The one entry point (app/runs.py): the checks before anything is written, GridError naming
its field, and the Run page placing each error by that field (not by its text)."""

from __future__ import annotations

from pathlib import Path

import pytest

import experiments
from app import cli, runs
from app.dashboard import forms
from app.dashboard.forms import RunInputs
from app.errors import BadInput
from experiments.spec.grid import GridError, parse_spec

ONE_LOAD = {"concurrency": [1]}
CHAT_YAML = Path(experiments.__file__).parent / "profiles" / "chat.yaml"


@pytest.mark.parametrize(("data", "field", "message"), [
    ({**ONE_LOAD, "batch_sizes": [0]}, "batch_sizes", "batch_sizes: every batch size must be >= 1"),
    ({**ONE_LOAD, "batch_sizes": [1, "x"]}, "batch_sizes",
     "batch_sizes.1: Input should be a valid integer, unable to parse string as an integer"),
    ({"search": {"budget_s": 0}}, "search", "search.budget_s: Input should be greater than 0"),
    # Checks across fields: pydantic gives them no location; the field is named all the same.
    ({**ONE_LOAD, "policies": ["static"], "max_num_batched_tokens": [64]}, "max_num_batched_tokens",
     "sweep: max_num_batched_tokens needs the continuous policy; add it to policies"),
    ({**ONE_LOAD, "engine_args": ["--x"]}, "engine_args",
     "sweep: engine_args: extra arguments go to an --engine preset's server; with --server-cmd "
     "write them into the template"),
    ({**ONE_LOAD, "engine": "vllm", "policies": ["continuous"], "max_wait_ms": [0, 10]}, "engine",
     "sweep: vllm has no setting for max_wait_ms (only 0: vllm admits waiting requests at every step)"),
    ({}, None, "sweep: give exactly one of concurrency (closed loop), rate (open loop) or speedup "
               "(trace replay)"),
])
def test_grid_error_names_its_field_and_keeps_its_message(data, field, message) -> None:
    with pytest.raises(GridError) as caught:
        parse_spec(data)
    assert str(caught.value) == message
    assert caught.value.field == field
    # The reason is the message without the location in front of it.
    assert caught.value.reason == message.split(": ", 1)[1]


def test_profile_checks_name_their_field() -> None:
    with pytest.raises(GridError) as caught:
        runs.check_spec({"speedup": [2.0]}, dict)
    assert (caught.value.field, caught.value.reason) == (
        "speedup", "profile 'chat' replays no trace; use a trace profile (azure-conv, azure-code, "
                   "a .csv or .jsonl) or sweep rate / concurrency")
    with pytest.raises(GridError) as caught:
        runs.check_spec({"search": {"load": "rate"}, "profile": "azure-conv"}, dict)
    assert caught.value.field == "profile"
    assert str(caught.value).startswith("profile: 'azure-conv' replays a trace")
    with pytest.raises(GridError) as caught:
        runs.check_spec({**ONE_LOAD, "slos": {"ttfb": {"max_ms": 9}}}, dict)
    assert caught.value.field == "slos" and caught.value.reason.startswith("ttfb")


def test_saved_profiles_are_read_only_for_a_name_not_built_in() -> None:
    def unreachable() -> dict[str, str]:
        raise AssertionError("a built-in profile needs no store")

    spec, prof = runs.check_spec({**ONE_LOAD, "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 150}}},
                                 unreachable)
    assert (spec.load.profile, prof.name) == ("chat", "chat")
    assert prof.slos["ttft_ms"].max_ms == 150.0  # as the sweep runs it: the spec's SLOs
    calls: list[int] = []
    mine = (CHAT_YAML.read_text("utf-8")).replace("name: chat", "name: mine")
    _, prof = runs.check_spec({**ONE_LOAD, "profile": "mine"},
                              lambda: calls.append(1) or {"mine": mine})
    assert prof.name == "mine" and calls == [1]


@pytest.mark.parametrize(("inputs", "errors"), [
    (RunInputs(batch_sizes="0"), {"batch_sizes": "every batch size must be >= 1"}),
    (RunInputs(loads="0, 8"), {"load": "every concurrency must be >= 1"}),
    (RunInputs(policies=("static",), token_budgets="64"),
     {"max_num_batched_tokens": "max_num_batched_tokens needs the continuous policy; add it to policies"}),
    # An error across fields with no one field is shown under the load.
    (RunInputs(executor="ray", replicas="1, 2"),
     {"load": "--executor ray runs one engine per worker (one GPU each); measure replicas with the "
              "local executor, or drop --replicas"}),
    (RunInputs(engine="vllm", policies=("continuous",), max_wait_ms="0, 10"),
     {"executor": "vllm has no setting for max_wait_ms (only 0: vllm admits waiting requests at "
                  "every step)"}),
])
def test_the_run_page_places_each_error_by_its_field(inputs, errors) -> None:
    spec, got = forms.build_spec(inputs, {})
    assert spec is None and got == errors


def test_an_engine_not_installed_is_said_under_run_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm on it
    inputs = RunInputs(engine="vllm", policies=("continuous",), max_wait_ms="0")
    spec, errors = forms.build_spec(inputs, {})
    assert spec is None and list(errors) == ["executor"]
    assert errors["executor"].startswith("'vllm' is not on PATH; install it")  # no `--engine vllm: `
    with pytest.raises(BadInput, match="^--engine vllm: 'vllm' is not on PATH"):  # the CLI's words
        runs.check_engine("vllm", None)


def test_a_ray_address_that_is_not_host_port_is_refused() -> None:
    pytest.importorskip("ray")
    spec = parse_spec({**ONE_LOAD, "executor": "ray", "ray_address": "nohost"})
    said = "--ray-address 'nohost' is not HOST:PORT (e.g. 10.0.0.5:6379)"
    with pytest.raises(BadInput) as caught:
        runs.check_placement(spec)
    assert str(caught.value) == said
    _, errors = forms.build_spec(RunInputs(executor="ray", ray_address="nohost"), {})
    assert errors == {"executor": said}


@pytest.mark.parametrize(("argv", "line"), [
    (["sweep", "--concurrency", "1", "--batch-sizes", "0"],
     "error: batch_sizes: every batch size must be >= 1"),
    (["search", "--batch-sizes", "1", "--max-wait-ms", "0", "--policy", "static",
      "--max-num-batched-tokens", "64"],
     "error: sweep: max_num_batched_tokens needs the continuous policy; add it to policies"),
    (["search", "--profile", "nosuch"], "error: unknown profile 'nosuch'"),
])
def test_the_cli_checks_before_it_writes(argv, line, tmp_path: Path, capsys) -> None:
    db = tmp_path / "t.db"
    assert cli.main([*argv, "--db", f"sqlite:///{db}"]) == 2
    assert capsys.readouterr().err.startswith(line)
    assert not db.exists()  # not even a new store file


def test_a_queued_engine_sweep_names_its_server_as_the_cli_does(tmp_path: Path) -> None:
    from db.store import Store

    store = Store(f"sqlite:///{tmp_path / 'q.db'}")
    spec = parse_spec({**ONE_LOAD, "engine": "vllm", "model": "/m", "policies": ["continuous"],
                       "max_wait_ms": [0], "batch_sizes": [4]})
    sweep = store.get_sweep(runs.queue_sweep(store, spec))
    assert (sweep.device, sweep.device_name) == ("server", "server per config from --engine vllm")
