"""`tradeoff bench --vs`: tradeoff serve against another server in one run. `--vs URL` against
`tradeoff mock-server` (known timing, no vLLM); vLLM itself is measured by running the bench
(docs/benchmarks.md), not here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

import experiments.bench_vs
from app.cli import main
from experiments.targets.external import free_port

ITL_MS = 4.0


@pytest.fixture
def mock_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "mock-server", "--ttft-ms", "10",
                             "--itl-ms", str(ITL_MS), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def _serve_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if {"serve", "--batch-size", "16"} <= set(p.info["cmdline"] or [])]


@pytest.mark.slow
def test_vs_url_measures_both_servers_per_load_and_stops_its_own(capsys, monkeypatch, mock_url: str):
    monkeypatch.setattr(experiments.bench_vs, "LOADS", ((1, 4), (4, 8)))
    before = {p.pid for p in _serve_processes()}
    code = main(["bench", "--model", "builtin:tiny", "--device", "cpu", "--vs", mock_url,
                 "--repeats", "1", "--dtype", "bfloat16", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert [load["users"] for load in result["loads"]] == [1, 4]
    for load in result["loads"]:
        ours, theirs = load["tradeoff"], load["other"]
        for figures in (ours, theirs):
            assert figures["output_tok_s"] > 0 and figures["requests_failed"] == 0
            assert figures["ttft_ms_p50"] <= figures["ttft_ms_p90"]
        assert load["tok_s_ratio"] == pytest.approx(ours["output_tok_s"] / theirs["output_tok_s"], rel=1e-2)
        assert theirs["tpot_ms_p50"] == pytest.approx(ITL_MS, abs=2.0)  # the mock's known gap
    assert "mock at" in result["servers"]["other"]["server"]
    assert "serve --model builtin:tiny" in result["servers"]["tradeoff"]["command"]
    # Both servers schedule alike: tradeoff serve runs vLLM's CPU token budget, prefix caching off.
    assert "--max-num-batched-tokens 2048 --prefix-caching off" in result["servers"]["tradeoff"]["command"]
    assert (result["max_num_batched_tokens"], result["prefix_caching"]) == (2048, False)
    assert "--dtype bfloat16" in result["servers"]["tradeoff"]["command"] and result["dtype"] == "bfloat16"
    assert "round 1/1, 4 users: other" in err
    time.sleep(0.5)
    assert {p.pid for p in _serve_processes()} <= before, "the bench's tradeoff serve outlived it"


@pytest.mark.parametrize(("args", "needle"), [
    (["--vs", "vllm", "--engine-python", "/nonexistent/python"], "--engine-python /nonexistent/python"),
    (["--vs", "sglang"], "--vs takes `vllm` or the URL"),
    (["--engine-python", sys.executable], "--engine-python goes with --vs vllm"),
    (["--vs", "http://127.0.0.1:9/v1", "--engine-python", sys.executable], "a --vs URL is already running"),
    (["--vs", "vllm", "--dtype", "fp8"], "--dtype must be one of auto, float32, bfloat16"),
    (["--dtype", "bfloat16"], "--dtype goes with --vs"),
])
def test_vs_bad_input_exits_2_with_one_line_before_starting_anything(capsys, args: list[str],
                                                                       needle: str):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_vs_vllm_when_vllm_is_absent_says_so_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(experiments.bench_vs, "DEFAULT_VLLM_PYTHON", tmp_path / "no-python")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", "--vs", "vllm"]) == 2
    err = capsys.readouterr().err.strip()
    assert "vLLM is not installed here" in err and len(err.splitlines()) == 1
