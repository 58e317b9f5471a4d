"""Every export format, parsed back by the matching parser and checked field by field."""

from __future__ import annotations

import ast
import json
import re
import shlex
from datetime import datetime

import pytest
import yaml

from common.records import SLO, Dist, TrialConfig, TrialMetrics, TrialRecord
from experiments.analysis.recommend import Recommendation, recommend
from experiments.export.render import FORMATS, export_config, load_exported_config

PROVENANCE = {
    "model": "meta-llama/Llama-3.2-1B", "device": "NVIDIA H100 80GB", "sweep_id": 7,
    "date": "2025-01-02T10:00:00", "profile": "chat", "tradeoff_version": "0.1.0",
}
TTFT_500 = SLO("ttft_ms", "p90", 500.0)


def trial(trial_id: int, config: TrialConfig, ttft: float, goodput: float) -> TrialRecord:
    d = Dist(ttft, ttft, ttft, ttft, ttft, 10)
    attainment = 1.0 if ttft <= 500 else 0.0  # every request's TTFT is `ttft`: all or none meet it
    metrics = TrialMetrics(100, 0, 10.0, goodput, 100 * goodput, 200 * goodput, d, d, d, d, d, d,
                           goodput, attainment, 4.0, None, False).flat()
    return TrialRecord(trial_id, 7, config, "done", metrics)


def rec_for(config: TrialConfig, ttft: float = 400.0) -> Recommendation:
    return recommend([trial(1, config, ttft, 12.0)], "max_goodput", [TTFT_500])


@pytest.fixture
def continuous() -> Recommendation:
    return rec_for(TrialConfig("continuous", 16, 5.0, concurrency=8))


@pytest.fixture
def static() -> Recommendation:
    return rec_for(TrialConfig("static", 4, 2.5, rate=2.0))


# --- a strict protobuf text-format parser, enough for config.pbtxt fragments -----------------

_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<tok>[A-Za-z_]\w*|-?\d+(?:\.\d+)?|"[^"\n]*"|[:{}\[\],])')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"bad character {text[pos]!r} at {pos}")
        if match.group("tok"):
            out.append(match.group("tok"))
        pos = match.end()
    return out


def parse_pbtxt(text: str) -> dict[str, list]:
    """`key: value`, `key { ... }` and `#` comments; raises on anything else or bad nesting."""
    tokens = _tokens(text)
    message, end = _message(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"unexpected {tokens[end]!r}")
    return message


def _message(tokens: list[str], i: int) -> tuple[dict[str, list], int]:
    fields: dict[str, list] = {}
    while i < len(tokens) and tokens[i] != "}":
        key = tokens[i]
        if not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise ValueError(f"expected a field name, got {key!r}")
        i += 1
        if i < len(tokens) and tokens[i] == ":" and tokens[i + 1:i + 2] != ["{"]:
            value, i = _scalar(tokens, i + 1)
        else:
            i += i < len(tokens) and tokens[i] == ":"
            if tokens[i:i + 1] != ["{"]:
                raise ValueError(f"expected ':' or '{{' after {key!r}")
            value, i = _message(tokens, i + 1)
            if tokens[i:i + 1] != ["}"]:
                raise ValueError(f"unclosed {key!r}")
            i += 1
        fields.setdefault(key, []).append(value)
    return fields, i


def _scalar(tokens: list[str], i: int) -> tuple[object, int]:
    if i >= len(tokens) or tokens[i] in ":{}[],":
        raise ValueError("expected a value")
    token = tokens[i]
    if token.startswith('"'):
        return token[1:-1], i + 1
    if token[0] in "-0123456789":
        return (float(token) if "." in token else int(token)), i + 1
    return token, i + 1  # an enum value


def test_the_pbtxt_parser_is_strict():
    parsed = parse_pbtxt('a: 1 # c\nb { c: "x" d: 2.5 }\ne: { f: X }')
    assert parsed == {"a": [1], "b": [{"c": ["x"], "d": [2.5]}], "e": [{"f": ["X"]}]}
    for bad in ("a {", "a: 1 }", "a:", "a 1", "a: 1;", "{ a: 1 }"):
        with pytest.raises(ValueError):
            parse_pbtxt(bad)


# --- json / yaml ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,loads", [("json", json.loads), ("yaml", yaml.safe_load)])
def test_json_and_yaml_documents(continuous, fmt, loads):
    doc = loads(export_config(continuous, fmt, PROVENANCE))
    assert doc["engine"] == {"model": "meta-llama/Llama-3.2-1B", "policy": "continuous",
                             "max_batch_size": 16, "max_wait_ms": 5.0}
    assert doc["load"] == {"concurrency": 8}
    assert doc["expected_metrics"]["ttft_ms"]["p90"] == 400.0
    assert doc["expected_metrics"]["goodput_rps"] == 12.0
    assert doc["slos"][0] == {"metric": "ttft_ms", "percentile": "p90", "max_ms": 500.0,
                              "threshold_ms": 500.0, "rule": "absolute",
                              "value": 400.0, "passed": True, "margin_ms": 100.0}
    assert doc["provenance"] == {**PROVENANCE, "engine": None} and doc["feasible"] is True
    assert doc["version"] == 1


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_exported_documents_load_back(static, fmt):
    loaded = load_exported_config(export_config(static, fmt, PROVENANCE))
    assert loaded == {"policy": "static", "batch_size": 4, "max_wait_ms": 2.5,
                      "model": "meta-llama/Llama-3.2-1B", "max_num_batched_tokens": None,
                      "ttft_slo_ms": None, "tpot_slo_ms": None, "replicas": 1, "router": None,
                      "prefix_caching": None}


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_token_budget_travels_through_the_document(fmt):
    rec = rec_for(TrialConfig("continuous", 8, 0.0, concurrency=4, max_num_batched_tokens=256))
    text = export_config(rec, fmt, PROVENANCE)
    assert yaml.safe_load(text)["engine"]["max_num_batched_tokens"] == 256
    assert load_exported_config(text)["max_num_batched_tokens"] == 256


@pytest.mark.parametrize("caching", [True, False, None])
def test_prefix_caching_travels_through_the_document(caching):
    rec = rec_for(TrialConfig("continuous", 8, 0.0, concurrency=4, prefix_caching=caching))
    text = export_config(rec, "yaml", PROVENANCE)
    assert yaml.safe_load(text)["engine"].get("prefix_caching") is caching  # None: not written
    assert load_exported_config(text)["prefix_caching"] is caching


def test_open_loop_load_and_dates_in_documents(static):
    provenance = {**PROVENANCE, "date": datetime(2025, 1, 2, 10, 0)}
    doc = yaml.safe_load(export_config(static, "yaml", provenance))
    assert doc["load"] == {"rate": 2.0, "burstiness": 1.0}
    assert doc["provenance"]["date"] == "2025-01-02T10:00:00"


@pytest.mark.parametrize("text,field", [
    ("engine: [unclosed", "not valid YAML"),
    ("- a list", "engine"),
    ("version: 1", "engine"),
    ("engine: {policy: dynamic, max_batch_size: 4, max_wait_ms: 0, model: m}", "engine.policy"),
    ("engine: {policy: static, max_batch_size: 0, max_wait_ms: 0, model: m}", "max_batch_size"),
    ("engine: {policy: static, max_batch_size: true, max_wait_ms: 0, model: m}", "max_batch_size"),
    ("engine: {policy: static, max_batch_size: 2, max_wait_ms: -1, model: m}", "max_wait_ms"),
    ("engine: {policy: static, max_batch_size: 2, max_wait_ms: .nan, model: m}", "max_wait_ms"),
    ("engine: {policy: static, max_batch_size: 2, max_wait_ms: 1}", "engine.model"),
    ("engine: {policy: continuous, max_batch_size: 2, max_wait_ms: 1, model: m, "
     "max_num_batched_tokens: 0}", "max_num_batched_tokens"),
    ("engine: {policy: continuous, max_batch_size: 2, max_wait_ms: 1, model: m, "
     "prefix_caching: sometimes}", "engine.prefix_caching"),
])
def test_load_exported_config_rejects_malformed_input(text, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        load_exported_config(text)


# --- server formats -------------------------------------------------------------------------


def comments(text: str) -> str:
    return " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))


@pytest.mark.parametrize("fmt", FORMATS[2:])
def test_every_server_format_carries_metrics_slos_and_provenance(continuous, fmt):
    notes = comments(export_config(continuous, fmt, PROVENANCE))
    for expected in ("meta-llama/Llama-3.2-1B", "NVIDIA H100 80GB", "sweep 7",
                     "2025-01-02T10:00:00", "profile chat", "p90 TTFT 400 ms",
                     "goodput 12.0 req/s", "SLO p90 TTFT <= 500 ms: met (400 ms)"):
        assert expected in notes


def test_vllm_command_parses_and_says_what_has_no_equivalent(continuous, static):
    text = export_config(continuous, "vllm", PROVENANCE)
    assert shlex.split(text, comments=True) == [
        "vllm", "serve", "meta-llama/Llama-3.2-1B", "--max-num-seqs", "16"]
    notes = comments(text)
    assert "--scheduler-delay-factor" in notes and "no equivalent" in notes
    assert "no vLLM equivalent" not in notes
    assert "policy static has no vLLM equivalent" in comments(export_config(static, "vllm",
                                                                            PROVENANCE))


def test_vllm_command_carries_the_token_budget_and_chunked_prefill():
    rec = rec_for(TrialConfig("continuous", 8, 0.0, concurrency=4, max_num_batched_tokens=256))
    text = export_config(rec, "vllm", PROVENANCE)
    assert shlex.split(text, comments=True)[3:] == [
        "--max-num-seqs", "8", "--max-num-batched-tokens", "256", "--enable-chunked-prefill"]
    assert "as tradeoff measured" in comments(text)


def test_without_a_budget_vllm_is_told_it_chunks_by_default(continuous):
    assert "always chunks prefills" in comments(export_config(continuous, "vllm", PROVENANCE))


@pytest.mark.parametrize("fmt", ["triton", "ray-serve", "torchserve"])
def test_request_level_servers_say_they_have_no_token_budget(fmt):
    rec = rec_for(TrialConfig("continuous", 8, 0.0, concurrency=4, max_num_batched_tokens=256))
    notes = comments(export_config(rec, fmt, PROVENANCE))
    assert "max_num_batched_tokens 256 (chunked prefill) has no equivalent" in notes


def test_vllm_quotes_odd_model_paths(continuous):
    text = export_config(continuous, "vllm", {**PROVENANCE, "model": "/models/my model's"})
    assert shlex.split(text, comments=True)[2] == "/models/my model's"


def test_vllm_zero_wait_is_the_default(continuous):
    config = TrialConfig("continuous", 8, 0.0, concurrency=4)
    notes = comments(export_config(rec_for(config), "vllm", PROVENANCE))
    assert "matches vLLM's default" in notes and "--scheduler-delay-factor" not in notes


def test_triton_fragment_parses_as_protobuf_text(continuous, static):
    text = export_config(continuous, "triton", PROVENANCE)
    assert parse_pbtxt(text) == {"max_batch_size": [16],
                                 "dynamic_batching": [{"max_queue_delay_microseconds": [5000]}]}
    assert "batches per request" in comments(text)
    static_text = export_config(static, "triton", PROVENANCE)
    (batcher,) = parse_pbtxt(static_text)["dynamic_batching"]
    assert batcher == {"max_queue_delay_microseconds": [2500]}
    assert "batches per request" not in comments(static_text)


def _decorator_kwargs(tree: ast.Module) -> dict[str, dict]:
    found = {}
    for node in ast.walk(tree):
        for deco in getattr(node, "decorator_list", []):
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute):
                found[deco.func.attr] = {k.arg: ast.literal_eval(k.value) for k in deco.keywords}
    return found


def test_ray_serve_snippet_is_valid_python_with_the_knobs(continuous, static):
    text = export_config(continuous, "ray-serve", PROVENANCE)
    decorators = _decorator_kwargs(ast.parse(text))
    assert decorators["deployment"] == {"max_ongoing_requests": 16}
    assert decorators["batch"] == {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}
    assert "batches per request" in comments(text)
    static_text = export_config(static, "ray-serve", PROVENANCE)
    assert _decorator_kwargs(ast.parse(static_text))["batch"]["batch_wait_timeout_s"] == 0.0025
    assert "batches per request" not in comments(static_text)


def test_torchserve_model_config_and_properties_parse(continuous, static):
    text = export_config(continuous, "torchserve", PROVENANCE)
    assert yaml.safe_load(text) == {"minWorkers": 1, "maxWorkers": 1, "batchSize": 16,
                                    "maxBatchDelay": 5}
    (line,) = [x for x in text.splitlines() if x.startswith("# models=")]
    models = json.loads(line.removeprefix("# models="))
    assert models["Llama-3.2-1B"]["1.0"]["batchSize"] == 16
    assert models["Llama-3.2-1B"]["1.0"]["maxBatchDelay"] == 5
    assert "batches per request" in comments(text)
    static_text = export_config(static, "torchserve", PROVENANCE)
    assert yaml.safe_load(static_text)["maxBatchDelay"] == 3
    assert "2.5 ms rounded to 3 ms" in comments(static_text)


# --- errors and infeasible picks ------------------------------------------------------------


def test_unknown_format_and_missing_provenance(continuous):
    with pytest.raises(ValueError, match="json, yaml, vllm, triton, ray-serve, torchserve"):
        export_config(continuous, "k8s", PROVENANCE)
    with pytest.raises(ValueError, match="device, sweep_id"):
        export_config(continuous, "json", {"model": "m", "date": "d", "profile": "p",
                                           "tradeoff_version": "0"})


def test_profile_and_version_may_be_unknown(continuous):
    partial = {k: PROVENANCE[k] for k in ("model", "device", "sweep_id", "date")}
    assert json.loads(export_config(continuous, "json", partial))["provenance"]["profile"] is None
    assert "profile unknown, tradeoff unknown" in comments(export_config(continuous, "vllm",
                                                                          partial))


def test_nothing_to_export_without_a_config():
    empty = recommend([], "max_goodput", [TTFT_500])
    with pytest.raises(ValueError, match="nothing to export"):
        export_config(empty, "yaml", PROVENANCE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_nearest_miss_exports_with_a_warning(fmt):
    miss = rec_for(TrialConfig("continuous", 8, 1.0, concurrency=4), ttft=620.0)
    assert not miss.feasible
    text = export_config(miss, fmt, PROVENANCE)
    if fmt == "json":
        assert json.loads(text)["feasible"] is False
    else:
        assert "WARNING: no measured config met the SLOs" in text


# --- replicas behind a router ---------------------------------------------------------------


@pytest.fixture
def scaled() -> Recommendation:
    return rec_for(TrialConfig("continuous", 16, 5.0, concurrency=8, replicas=2,
                               router="least_outstanding"))


def test_documents_carry_replicas_and_router_and_read_back(scaled, continuous):
    doc = json.loads(export_config(scaled, "json", PROVENANCE))
    assert doc["engine"]["replicas"] == 2 and doc["engine"]["router"] == "least_outstanding"
    back = load_exported_config(export_config(scaled, "yaml", PROVENANCE))
    assert (back["replicas"], back["router"]) == (2, "least_outstanding")
    one = load_exported_config(export_config(continuous, "json", PROVENANCE))
    assert (one["replicas"], one["router"]) == (1, None)
    with pytest.raises(ValueError, match="unknown router"):
        load_exported_config(json.dumps({"engine": {**doc["engine"], "router": "fastest"}}))


def test_vllm_says_data_parallel_not_an_external_balancer(scaled):
    text = export_config(scaled, "vllm", PROVENANCE)
    assert shlex.split(text, comments=True)[-2:] == ["--data-parallel-size", "2"]
    assert "data parallelism" in comments(text) and "not 2 servers behind" in comments(text)
    rr = rec_for(TrialConfig("continuous", 16, 5.0, concurrency=8, replicas=2, router="round_robin"))
    assert "run 2 `vllm serve` instances behind a load balancer" in comments(
        export_config(rr, "vllm", PROVENANCE))


def test_ray_serve_triton_torchserve_carry_the_replica_count(scaled):
    ray_text = export_config(scaled, "ray-serve", PROVENANCE)
    assert _decorator_kwargs(ast.parse(ray_text))["deployment"] == {
        "max_ongoing_requests": 16, "num_replicas": 2, "ray_actor_options": {"num_gpus": 1}}
    assert "power of two choices" in comments(ray_text)
    (group,) = parse_pbtxt(export_config(scaled, "triton", PROVENANCE))["instance_group"]
    assert group == {"count": [1], "kind": ["KIND_GPU"], "gpus": [0, 1]}
    ts = yaml.safe_load(export_config(scaled, "torchserve", PROVENANCE))
    assert (ts["minWorkers"], ts["maxWorkers"]) == (2, 2)


def test_yaml_carries_measurements_to_three_significant_digits() -> None:
    # No 17-digit floats: measured values are rounded, the user's thresholds stay as given.
    rec = recommend([trial(1, TrialConfig("continuous", 16, 5.0, concurrency=8), 123.456789,
                           12.3456789)], "max_goodput", [SLO("ttft_ms", "p90", 500.123)])
    text = export_config(rec, "yaml", PROVENANCE)
    doc = yaml.safe_load(text)
    assert doc["expected_metrics"]["ttft_ms"]["p90"] == 123.0
    assert doc["expected_metrics"]["goodput_rps"] == 12.3
    assert doc["slos"][0]["value"] == 123.0 and doc["slos"][0]["max_ms"] == 500.123
    assert not re.search(r"\d\.\d{5,}", text)
