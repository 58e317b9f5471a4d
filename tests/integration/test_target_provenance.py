"""Where numbers came from (issue 20, item 7): runs against an external server are labelled with
its URL, served model, engine and version, never as tradeoff's engine or builtin:tiny; knob
labels a bare --target's server controls are refused; `search --target URL` runs on its defaults.

Real HTTP against `tradeoff mock-server` (a subprocess on a free port, serving the model
`acme/mock-7b`, owned_by `tradeoff`, no /version), a stub server for vLLM's /version, and
real SQLite files."""

from __future__ import annotations

import http.server
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from common.records import TrialConfig
from db.store import Store
from experiments.spec.grid import SweepSpec
from experiments.targets.external import ServerProcess
from experiments.targets.http_target import describe_server

pytestmark = pytest.mark.slow  # real servers, real trials
SERVED = "acme/mock-7b"
MOCK = (f"{sys.executable} -m app.cli mock-server --ttft-ms 20 --itl-ms 2 --capacity {{batch_size}} "
        f"--port {{port}} --model {SERVED}")
# The same with a TTFT that leaves the client-lag check room (its limit is 2% of p50 TTFT, at
# least 1 ms): at 20 ms the limit was 1 ms, a hiccup of a shared CI machine marked the 4-request
# trial client-bound, and a client-bound sweep has nothing to export. 250 ms: a 5 ms limit.
MOCK_ROOMY = MOCK.replace("--ttft-ms 20", "--ttft-ms 250")
# What a bare --target's exports and listings must never say about it.
NOT_THE_SOURCE = ("builtin:tiny", "tradeoff's engine", "tradeoff prefilled", "--max-num-seqs",
                  "max_batch_size", "tradeoff's max batch size")


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """A running mock server (capacity 4) on a free port: the bare --target under test."""
    with ServerProcess(MOCK, TrialConfig("continuous", 4, 0.0), health_timeout_s=60) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def vllm_like() -> Iterator[str]:
    """/v1/models and /version as vLLM answers them (real HTTP on loopback)."""
    bodies = {"/v1/models": {"object": "list", "data": [
                  {"id": "other", "owned_by": "vllm"},
                  {"id": "meta/llama-8b", "owned_by": "vllm\n<b>", "max_model_len": 4096}]},
              "/version": {"version": "0.6.3.post1"}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = json.dumps(bodies[self.path]).encode() if self.path in bodies else b"{}"
            self.send_response(200 if self.path in bodies else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_server_says_what_it_runs(mock_url: str, vllm_like: str) -> None:
    info = describe_server(vllm_like, "meta/llama-8b")
    assert (info.owned_by, info.version) == ("vllm<b>", "0.6.3.post1")  # one printable line
    assert info.label == f"meta/llama-8b at {vllm_like} (vllm<b> 0.6.3.post1)"
    mock = describe_server(mock_url, SERVED)  # no /version route: tolerated
    assert (mock.owned_by, mock.version) == ("tradeoff", None)
    assert mock.label == f"{SERVED} at {mock_url} (tradeoff)"
    started = time.monotonic()
    dead = describe_server("http://127.0.0.1:1/v1", "m", timeout_s=0.5)  # nothing there
    assert (dead.owned_by, dead.version, dead.label) == (None, None, "m at http://127.0.0.1:1/v1")
    assert time.monotonic() - started < 5


def test_trial_against_a_target_refuses_knob_labels_and_names_the_server(
        mock_url: str, capsys: pytest.CaptureFixture[str], tiny_profile: Path) -> None:
    code, out, err = cli(capsys, "trial", "--target", mock_url, "--policy", "adaptive",
                         "--concurrency", "2")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: --policy describes the server's own batching, which tradeoff does not control "
        "for --target URL; drop it (the trial measures the server as it runs), or sweep knobs on "
        "a server started per config with `tradeoff sweep --server-cmd` or `--engine`"]
    code, out, err = cli(capsys, "trial", "--target", mock_url, "--tokenizer", "builtin:tiny",
                         "--profile", str(tiny_profile), "--concurrency", "2", "--requests", "4",
                         "--json")
    assert code == 0, err
    trial = json.loads(out)
    assert trial["model"] == SERVED and trial["target"] == mock_url
    assert trial["server"] == {"url": mock_url, "model": SERVED, "owned_by": "tradeoff", "version": None}
    assert trial["measured_on"] == f"server at {mock_url} (tradeoff)"
    knobs = {k: trial["config"][k] for k in ("policy", "batch_size", "max_wait_ms",
                                             "max_num_batched_tokens")}
    assert knobs == {"policy": "server", "batch_size": None, "max_wait_ms": None,
                     "max_num_batched_tokens": None}
    code, out, err = cli(capsys, "trial", "--target", mock_url, "--tokenizer", "builtin:tiny",
                         "--profile", str(tiny_profile), "--concurrency", "1", "--requests", "2")
    assert code == 0, err
    assert out.splitlines()[1].split() == ["measured", "on", "server", "at", mock_url, "(tradeoff)"]
    assert not any(text in out for text in NOT_THE_SOURCE)


def test_a_target_sweep_is_listed_and_exported_as_the_server(
        mock_url: str, capsys: pytest.CaptureFixture[str], tiny_profile: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 't.db'}"
    code, out, err = cli(capsys, "sweep", "--target", mock_url, "--tokenizer", "builtin:tiny",
                         "--profile", str(tiny_profile), "--concurrency", "1,2", "--requests", "4",
                         "--db", db, "--json")
    assert code == 0, err
    sweep_id = json.loads(out)["sweep_id"]
    sweep = Store(db, create=False).get_sweep(sweep_id)
    assert (sweep.model, sweep.device) == (SERVED, "server")
    assert sweep.device_name == f"server at {mock_url} (tradeoff)"
    assert sweep.name == f"{tiny_profile} on {SERVED}"
    # A resumed sweep drives the same model with the same tokenizer as the one checked.
    target = SweepSpec(**sweep.grid).target
    assert (target.target_model, target.tokenizer) == (SERVED, "builtin:tiny")

    code, out, _ = cli(capsys, "sweeps", "--db", db, "--json")
    [row] = json.loads(out)
    assert row["model"] == f"{SERVED} on server at {mock_url} (tradeoff)" and row["device"] == "server"
    code, out, _ = cli(capsys, "trials", str(sweep_id), "--db", db, "--format", "json")
    rows = json.loads(out)
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    assert {(r["policy"], r["batch_size"], r["max_wait_ms"]) for r in rows} == {("server", None, None)}
    assert {r["measured_on"] for r in rows} == {f"{SERVED} at {mock_url} (tradeoff)"}

    texts = {}
    for fmt in ("json", "yaml", "vllm", "triton", "ray-serve", "torchserve"):
        code, texts[fmt], err = cli(capsys, "export", "--sweep", str(sweep_id), "--format", fmt,
                                    "--db", db)
        assert code == 0, err
        assert f"server at {mock_url} (tradeoff)" in texts[fmt]
        assert not [t for t in NOT_THE_SOURCE if t in texts[fmt]], (fmt, texts[fmt])
    doc = json.loads(texts["json"])
    assert "engine" not in doc and doc["server"]["model"] == SERVED
    assert doc["server"]["measured"] == f"server at {mock_url} (tradeoff)"
    assert doc["explanation"].startswith(f"{SERVED} on server at {mock_url} (tradeoff), batching by "
                                         "its own settings")
    assert all(line.startswith("#") for line in texts["vllm"].splitlines())  # no command to run
    assert "No vLLM config to export" in " ".join(texts["vllm"].split())
    (tmp_path / "export.yaml").write_text(texts["yaml"])
    code, out, err = cli(capsys, "trial", "--config", str(tmp_path / "export.yaml"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "batched by its own settings, so it has no engine config to run" in err


def test_search_against_a_target_runs_on_its_defaults(
        mock_url: str, capsys: pytest.CaptureFixture[str], tiny_profile: Path, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    code, out, err = cli(capsys, "search", "--target", mock_url, "--profile", str(tiny_profile),
                         "--concurrency", "--max-load", "2", "--requests", "4", "--budget-min",
                         "0.5", "--db", f"sqlite:///{db}", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [c["config"]["batch_size"] for c in result["capacities"]] == [1]  # one (placeholder) config
    sweep = Store(f"sqlite:///{db}", create=False).get_sweep(result["sweep_id"])
    assert (sweep.model, sweep.device_name) == (SERVED, f"server at {mock_url} (tradeoff)")
    assert sweep.name == f"capacity search: {tiny_profile} on {mock_url}"
    code, out, err = cli(capsys, "search", "--target", mock_url, "--batch-sizes", "1,4",
                         "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert code == 2 and out == "" and not (tmp_path / "none.db").exists()
    assert err.strip().splitlines() == [
        "error: --batch-sizes describes the server's own batching, which tradeoff does not control "
        "for --target URL; drop it, or start the server per config with --server-cmd or --engine"]
    with sqlite3.connect(db) as conn:  # nothing else was written by the refused search
        assert conn.execute("select count(*) from sweeps").fetchone() == (1,)
    conn.close()


def test_a_server_per_config_keeps_its_knobs_and_names_the_server(
        capsys: pytest.CaptureFixture[str], tiny_profile: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    code, out, err = cli(capsys, "sweep", "--server-cmd", MOCK_ROOMY, "--model", SERVED, "--tokenizer",
                         "builtin:tiny", "--profile", str(tiny_profile), "--policy", "continuous",
                         "--batch-sizes", "2", "--max-wait-ms", "0", "--concurrency", "2",
                         "--requests", "4", "--db", db, "--json")
    assert code == 0, err
    sweep_id = json.loads(out)["sweep_id"]
    sweep = Store(db, create=False).get_sweep(sweep_id)
    assert (sweep.model, sweep.device, sweep.device_name) == (
        SERVED, "server", "server per config from --server-cmd")
    [trial] = Store(db, create=False).list_trials(sweep_id)
    assert trial.config.batch_size == 2  # a real setting: the template gave it to the server
    where = trial.details.provenance.device_name
    assert where.startswith(f"{SERVED} at http://127.0.0.1:") and where.endswith("(tradeoff)")
    code, out, err = cli(capsys, "export", "--sweep", str(sweep_id), "--format", "vllm", "--db", db)
    assert code == 0, err
    text = " ".join(out.split())
    assert f"vllm serve {SERVED} --max-num-seqs 2" in out
    assert "1 run on server per config from --server-cmd" in text
    assert "tradeoff's engine" not in text and "tradeoff prefilled" not in text
