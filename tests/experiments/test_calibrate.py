"""Black-box calibration: the fit against hand-made probes (exact lines), the probes against a
mock server of known timing (the fit recovers it), predictions and errors, the CLI's answers."""

from __future__ import annotations

import json
import sys

import pytest

from app.cli import main
from common.records import TrialConfig
from engine.simulate import CostModel
from experiments.predict.calibrate import (
    Calibration,
    Probe,
    fit,
    predict_grid,
    prediction_errors,
    probe_server,
)
from experiments.spec.profiles import load_profile
from experiments.targets.external import ServerProcess
from experiments.targets.http_target import HttpTarget

ANY = TrialConfig("continuous", 1, 0.0, concurrency=1)


def test_the_fit_recovers_exact_lines():
    prefill = [Probe("prefill", n, 0.010 + 2e-5 * n, 5) for n in (16, 128, 512, 1024)]
    decode = [Probe("decode", c, 0.004 + 3e-4 * c, 5) for c in (1, 2, 4, 8)]
    cal = fit(prefill + decode)
    assert cal.cost.prefill_base_s == pytest.approx(0.010)
    assert cal.cost.prefill_per_token_s == pytest.approx(2e-5)
    assert cal.cost.decode_base_s == pytest.approx(0.004)
    assert cal.cost.decode_per_seq_s == pytest.approx(3e-4)
    assert all(abs(p["error"]) < 1e-9 for p in cal.to_dict()["probes"])


def test_too_few_points_give_a_flat_level_and_no_probes_an_error():
    cal = fit([Probe("prefill", 16, 0.02, 3), Probe("decode", 1, 0.005, 3), Probe("decode", 2, 0.007, 3)])
    assert (cal.cost.prefill_base_s, cal.cost.prefill_per_token_s) == (0.02, 0.0)
    assert (cal.cost.decode_base_s, cal.cost.decode_per_seq_s) == (0.006, 0.0)  # median, no slope
    with pytest.raises(ValueError, match="at least one prefill and one decode probe"):
        fit([Probe("prefill", 16, 0.02, 3)])


def test_predictions_follow_the_cost_model_and_errors_are_relative():
    cost = CostModel(0.010, 1e-5, 0.005, 1e-4, 0.0)
    configs = [TrialConfig("continuous", b, 0.0, concurrency=8) for b in (1, 8)]
    (one, p1), (eight, p8) = predict_grid(cost, load_profile("chat"), configs, 32)
    assert p8["output_tokens_per_s"] > 3 * p1["output_tokens_per_s"]  # batching pays off here
    assert p1["ttft_ms_p90"] > p8["ttft_ms_p90"]  # one at a time: the rest queue
    errors = prediction_errors({"output_tokens_per_s": 110.0, "ttft_ms_p90": None},
                               {"output_tokens_per_s": 100.0, "ttft_ms_p90": 5.0})
    assert errors["output_tokens_per_s"] == pytest.approx(0.10) and errors["ttft_ms_p90"] is None


@pytest.mark.slow
def test_probes_of_a_mock_server_recover_its_timing():
    # The mock: first token 40 ms after service starts, then one every 10 ms; up to 8 at once.
    cmd = f"{sys.executable} -m app.cli mock-server --ttft-ms 40 --itl-ms 10 --capacity 8 --port {{port}}"
    with ServerProcess(cmd, ANY, health_timeout_s=30) as server, HttpTarget(server.base_url) as target:
        probes = probe_server(target, vocab_size=259, max_context_tokens=4096, avoid_ids=[256, 257, 258],
                              max_running=8)
    cal = fit(probes)
    assert [p.x for p in probes if p.kind == "decode"] == [1, 2, 4, 8]
    assert 0.040 <= cal.cost.prefill_s(1, 512) <= 0.060  # 40 ms + the loopback round trip
    assert cal.cost.prefill_per_token_s < 5e-6  # the mock's TTFT does not grow with the prompt
    assert 0.009 <= cal.cost.decode_s(4) <= 0.013
    assert isinstance(cal, Calibration)


def test_calibrate_refuses_bad_input_in_one_line(capsys):
    assert main(["calibrate", "--target", "http://127.0.0.1:9/v1", "--max-running", "0"]) == 2
    assert "--max-running and --requests must be >= 1" in capsys.readouterr().err
    assert main(["calibrate", "--target", "http://127.0.0.1:9/v1", "--batch-sizes", "4"]) == 2
    assert "give the loads to predict at" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_cli_predicts_server_configs(capsys):
    cmd = f"{sys.executable} -m app.cli mock-server --ttft-ms 20 --itl-ms 5 --capacity 4 --port {{port}}"
    with ServerProcess(cmd, ANY, health_timeout_s=30) as server:
        code = main(["calibrate", "--target", server.base_url, "--tokenizer", "builtin:tiny",
                     "--max-running", "4", "--batch-sizes", "2,4", "--concurrency", "4",
                     "--requests", "16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [p["config"] for p in out["predictions"]] == ["continuous/b2/w0ms/concurrent@4",
                                                        "continuous/b4/w0ms/concurrent@4"]
    assert out["errors"] is None and out["cost_model"]["decode_base_s"] > 0
