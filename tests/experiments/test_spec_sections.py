"""SweepSpec in sections: flat input (stored grids, sweep.yaml, flags, the Run page) and nested
input give one spec; stored grids of every earlier version read; messages keep their flat names."""

from __future__ import annotations

import pytest

from experiments.spec.grid import GridError, SweepSpec, parse_spec
from experiments.spec.sections import flat_keys

FLAT = {"name": "vllm grid", "model": "Qwen/Qwen2.5-0.5B", "engine": "vllm", "policies": ["continuous"],
        "batch_sizes": [16, 4], "max_wait_ms": [0], "max_num_batched_tokens": [256, None],
        "rate": [8.0, 2.0], "requests": 64, "repetitions": 2, "seed": 3,
        "engine_args": ["--enforce-eager"], "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "2"},
        "server_cpus": [0, 1], "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 500.0}},
        "max_trial_s": 300.0}
NESTED = {"name": "vllm grid",
          "target": {"model": "Qwen/Qwen2.5-0.5B", "engine": "vllm", "engine_args": ["--enforce-eager"],
                     "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "2"}, "server_cpus": [0, 1]},
          "knobs": {"policies": ["continuous"], "batch_sizes": [16, 4], "max_wait_ms": [0],
                    "max_num_batched_tokens": [256, None]},
          "load": {"rate": [8.0, 2.0], "requests": 64, "repetitions": 2, "seed": 3,
                   "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 500.0}}},
          "execution": {"max_trial_s": 300.0}}

# What the flat SweepSpec stored as a sweep's grid (model_dump(mode="json")), copied as written:
# the last flat version (an --engine grid), and the first (before servers, searches, replicas).
STORED_FLAT = {
    "model": "Qwen/Qwen2.5-0.5B", "device": "auto", "dtype": "auto", "profile": "chat",
    "policies": ["continuous"], "batch_sizes": [4, 16], "max_wait_ms": [0.0],
    "max_num_batched_tokens": [None, 256], "prefix_caching": [None], "concurrency": None,
    "rate": [2.0, 8.0], "speedup": None, "trace_duration_s": None, "trace_start_s": None,
    "burstiness": 1.0, "requests": 64, "repetitions": 2, "seed": 3, "name": "vllm grid",
    "kv_budget_tokens": None, "max_trial_s": 300.0, "target": None, "target_model": None,
    "api_key_env": None, "tokenizer": None, "server_cmd": None, "engine": "vllm",
    "server_timeout_s": 120.0, "engine_args": ["--enforce-eager"],
    "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "2"}, "engine_python": None, "server_cpus": [0, 1],
    "calibrate": False, "slos": {"ttft_ms": {"percentile": "p90", "max_ms": 500.0}}, "search": None,
    "replicas": [1], "executor": "local", "ray_address": None, "ray_cpus_per_trial": 1, "routers": None}
STORED_FIRST = {"model": "builtin:tiny", "device": "auto", "dtype": "auto", "profile": "chat",
                "policies": ["static", "continuous"], "batch_sizes": [1, 4], "max_wait_ms": [0.0],
                "concurrency": [1, 4], "rate": None, "burstiness": 1.0, "requests": 48,
                "repetitions": 1, "seed": 0, "name": "chat on builtin:tiny", "kv_budget_tokens": None,
                "max_trial_s": None, "target": None}


def test_flat_and_nested_input_give_one_spec():
    flat, nested = parse_spec(FLAT), parse_spec(NESTED)
    assert flat == nested == SweepSpec(**FLAT) == SweepSpec(**NESTED)
    assert flat.knobs.batch_sizes == [4, 16] and flat.load.rate == [2.0, 8.0]
    assert flat.target.engine == "vllm" and flat.execution.max_trial_s == 300.0
    assert flat.trial_configs() == nested.trial_configs()


def test_a_mix_takes_flat_keys_over_the_section():
    mixed = {**NESTED, "rate": [1.0], "knobs": {**NESTED["knobs"], "batch_sizes": [8]}}
    spec = parse_spec(mixed)
    assert spec.load.rate == [1.0] and spec.knobs.batch_sizes == [8]
    assert spec.load.requests == 64  # the rest of the section stays


def test_target_is_the_url_flat_and_the_section_nested():
    url = "http://h:8000/v1"
    flat = parse_spec({"target": url, "target_model": "m", "concurrency": [1]})
    nested = parse_spec({"target": {"url": url, "target_model": "m"}, "load": {"concurrency": [1]}})
    assert flat == nested and flat.target.url == url and flat.is_bare_target


@pytest.mark.parametrize("stored", [STORED_FLAT, STORED_FIRST], ids=["last flat", "first"])
def test_stored_flat_grids_read(stored: dict):
    spec = SweepSpec(**stored)  # as the runners read a stored sweep: no parse_spec
    assert spec.target.model == stored["model"] and spec.knobs.batch_sizes == stored["batch_sizes"]
    assert spec.load.requests == stored["requests"] and spec.name == stored["name"]
    assert SweepSpec(**spec.model_dump(mode="json")) == spec  # re-stored nested, it reads back


def test_model_dump_is_nested_and_round_trips():
    spec = parse_spec(FLAT)
    dumped = spec.model_dump(mode="json")
    assert set(dumped) == {"name", "target", "knobs", "load", "execution", "search"}
    assert dumped["knobs"]["batch_sizes"] == [4, 16] and dumped["target"]["url"] is None
    assert SweepSpec(**dumped) == spec == SweepSpec.model_validate(spec.model_dump())
    assert parse_spec(dumped) == spec
    search = parse_spec({"rate": None, "search": {"load": "rate", "budget_s": 60}})
    assert SweepSpec(**search.model_dump(mode="json")) == search


def test_flat_keys_reads_either_shape():
    nested = parse_spec(NESTED).model_dump(mode="json")
    assert flat_keys(nested)["engine"] == "vllm" and flat_keys(nested)["target"] is None
    assert flat_keys(STORED_FIRST) == STORED_FIRST


@pytest.mark.parametrize("data, message", [
    ({"concurrency": [1], "batch_size": [1]}, "batch_size: Extra inputs are not permitted"),
    ({"concurrency": [1], "knobs": {"batch_size": [1]}}, "knobs.batch_size: Extra inputs are not permitted"),
    ({"concurrency": [1], "batch_sizes": [0, 4]}, "batch_sizes: every batch size must be >= 1"),
    ({"load": {"concurrency": [1]}, "knobs": {"batch_sizes": [0]}},
     "batch_sizes: every batch size must be >= 1"),
    ({"concurrency": [1], "policies": ["static", "fancy"]},
     "policies.1: Input should be 'static', 'continuous' or 'adaptive'"),
    ({"rate": [float("inf")]}, "rate.0: Input should be a finite number"),
    ({"concurrency": [1], "target": 5}, "target: Input should be a valid string"),
    ({"concurrency": [1], "target": "ftp://x/v1"}, "sweep: target 'ftp://x/v1' is not an http(s) URL"),
    ({"concurrency": [1], "ray_address": "h:1"}, "sweep: --ray-address needs --executor ray"),
    ({"search": {"budget_s": 0}}, "search.budget_s: Input should be greater than 0"),
    # Of several bad fields, the one the flat spec reported first, whatever its section.
    ({"concurrency": [1], "batch_sizes": [0], "profile": 5}, "profile: Input should be a valid string"),
    ({"concurrency": [1], "replicas": [0], "max_trial_s": 0}, "max_trial_s: Input should be greater than 0"),
    ({"concurrency": [1], "foo": 1, "routers": ["x"]},
     "routers: unknown router 'x'; use one of: round_robin, least_outstanding, power_of_two, "
     "prefix_affinity"),
])
def test_messages_name_the_flat_field(data: dict, message: str):
    with pytest.raises(GridError) as err:
        parse_spec(data)
    assert str(err.value) == message


def test_copy_with_puts_each_field_in_its_section():
    spec = parse_spec(FLAT)
    copy = spec.copy_with(rate=[1.0], batch_sizes=[8], model="m", search=None)
    assert (copy.load.rate, copy.knobs.batch_sizes, copy.target.model) == ([1.0], [8], "m")
    assert copy.target.engine == "vllm" and spec.load.rate == [2.0, 8.0]
    with pytest.raises(KeyError):
        spec.copy_with(batch_size=[1])
