"""The Run page's inputs -> a validated SweepSpec, each error attached to the field it names."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from app import runs
from app.errors import BadInput
from common.vocab import DEFAULT_ROUTER
from common.vocab import ROUTERS as ENGINE_ROUTERS
from experiments.spec.grid import GridError, SweepSpec
from experiments.spec.profiles import ProfileError

# engine.models.builtin_names() has these, but importing it loads torch into the UI process.
BUILTIN_MODELS: tuple[str, ...] = ("builtin:tiny", "builtin:small", "builtin:0.5b")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
LOAD_MODES: dict[str, str] = {"concurrency": "closed loop: virtual users",
                              "rate": "open loop: requests/s",
                              "speedup": "trace replay: speed-ups"}
# The routers, the default first as the form offers it.
ROUTERS: tuple[str, ...] = (DEFAULT_ROUTER, *(r for r in ENGINE_ROUTERS if r != DEFAULT_ROUTER))
# Spec fields (GridError.field) -> the Run page field that shows the error; an error about no
# one field (None) is shown under the load, where the grid's size is decided.
_FIELD_OF = {"concurrency": "load", "rate": "load", "speedup": "load", None: "load",
             "ray_address": "executor", "engine": "executor", "engine_args": "executor",
             "engine_env": "executor", "engine_python": "executor"}
EXECUTORS: dict[str, str] = {"local": "this machine, one trial at a time",
                             "ray": "Ray workers, one trial per GPU or CPU slot",
                             "engine": "a deployed engine's own server, started per config"}
# experiments.targets.engines.ENGINES, in words; the model field names what the engine loads.
ENGINE_NAMES: dict[str, str] = {"vllm": "vLLM", "sglang": "SGLang", "tgi": "TGI (text-generation-launcher)",
                                "llamacpp": "llama.cpp (llama-server, a GGUF path as model)"}


@dataclass(frozen=True)
class RunInputs:
    """What the user typed on the Run page, unparsed."""

    model: str = "builtin:tiny"
    device: str = "auto"
    profile: str = "chat"
    policies: tuple[str, ...] = ("static", "continuous")
    batch_sizes: str = "1, 4, 16"
    max_wait_ms: str = "0, 10"
    load_mode: str = "concurrency"
    loads: str = "1, 8"
    burstiness: float = 1.0
    requests: int = 48
    repetitions: int = 1
    name: str = ""
    search_load: str | None = None  # "rate" | "concurrency": find each config's capacity instead
    budget_min: float = 10.0
    token_budgets: str = "none"  # prefill token budgets, e.g. "64, 256, none"
    executor: str = "local"  # "local" | "ray": trials on Ray workers
    ray_address: str = ""  # empty: a local Ray cluster for the sweep's lifetime
    replicas: str = "1"  # replica counts, e.g. "1, 2"
    routers: tuple[str, ...] = ("least_outstanding",)  # used by counts > 1
    engine: str | None = None  # a preset server per config (vllm, sglang, tgi, llamacpp)
    engine_python: str = ""  # its environment's python; empty: the preset's command on PATH
    engine_args: str = ""  # extra server arguments, as a shell would split them
    engine_env: str = ""  # NAME=VALUE, comma-separated
    slos: tuple[tuple[str, float], ...] | None = None  # absolute p90 SLOs (metric, ms); None: the profile's


def parse_numbers(text: str, kind: type) -> list:
    """`1, 4, 16` (commas or spaces) -> numbers of `kind`; ValueError with a one-line reason."""
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
    if not items:
        raise ValueError("enter at least one value, e.g. 1, 4, 16")
    try:
        values = [float(item) for item in items]
    except ValueError:
        bad = next(item for item in items if not _is_float(item))
        raise ValueError(f"{bad!r} is not a number; enter numbers separated by commas") from None
    if any(not math.isfinite(v) for v in values):
        raise ValueError("values must be finite numbers")
    if kind is int and any(v != int(v) for v in values):
        raise ValueError("enter whole numbers, e.g. 1, 4, 16")
    return [kind(v) for v in values]


def parse_budgets(text: str) -> list[int | None]:
    """`64, 256, none` -> token budgets, None for `none` (no budget); ValueError with a reason."""
    items = [item for item in re.split(r"[,\s]+", text.strip().lower()) if item]
    if not items:
        raise ValueError("enter at least one value: a number of tokens or none")
    numbers = [item for item in items if item != "none"]
    return [None] * (len(items) - len(numbers)) + (parse_numbers(" ".join(numbers), int) if numbers else [])


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_spec(inputs: RunInputs, user_profiles: dict[str, str]) -> tuple[SweepSpec | None, dict]:
    """The validated spec, or None and {field: message} for what to fix."""
    errors: dict[str, str] = {}
    data = _spec_data(inputs, errors)
    if not inputs.model.strip():
        errors["model"] = "enter a built-in model, a Hugging Face id or a local path"
    elif inputs.model.startswith("builtin:") and inputs.model not in BUILTIN_MODELS:
        errors["model"] = f"unknown built-in model; use one of: {', '.join(BUILTIN_MODELS)}"
    if errors:
        return None, errors
    try:  # the checks the CLI runs before writing, but those that load a model or a tokenizer
        spec, _ = runs.check_spec(data, lambda: user_profiles)
    except GridError as exc:
        return None, {_FIELD_OF.get(exc.field, exc.field): exc.reason}
    except ProfileError as exc:
        return None, {"profile": str(exc)}
    try:  # said on the page: the worker would otherwise fail its first trial on it
        runs.check_placement(spec)
    except BadInput as exc:  # the engine's name is the field's own value: not repeated
        return None, {"executor": str(exc).removeprefix(f"--engine {spec.target.engine}: ")}
    return spec, {}


def _launch_data(inputs: RunInputs, errors: dict[str, str]) -> dict:
    """The launch fields of the spec; a malformed one is said under the Run-on field."""
    import shlex

    data: dict = {"engine_python": inputs.engine_python.strip() or None}
    try:
        data["engine_args"] = shlex.split(inputs.engine_args)
    except ValueError as exc:
        errors["executor"] = f"extra server arguments: {str(exc).lower()}; fix the quoting"
    pairs = [p.strip() for p in inputs.engine_env.split(",") if p.strip()]
    bad = next((p for p in pairs if "=" not in p or p.startswith("=")), None)
    if bad is not None:
        errors["executor"] = f"server environment {bad!r}: give NAME=VALUE, e.g. VLLM_CPU_KVCACHE_SPACE=2"
    data["engine_env"] = dict(p.split("=", 1) for p in pairs if bad is None)
    return data


def _spec_data(inputs: RunInputs, errors: dict[str, str]) -> dict:
    data = {"model": inputs.model.strip(), "device": inputs.device, "profile": inputs.profile,
            "policies": list(inputs.policies), "requests": inputs.requests,
            "repetitions": inputs.repetitions, "name": inputs.name.strip() or None,
            "executor": "local" if inputs.engine else inputs.executor,
            "ray_address": inputs.ray_address.strip() or None, "engine": inputs.engine,
            **_launch_data(inputs, errors),
            "slos": None if inputs.slos is None else {m: {"percentile": "p90", "max_ms": v}
                                                      for m, v in inputs.slos}}
    closed = inputs.load_mode == "concurrency"
    lists = (("batch_sizes", inputs.batch_sizes, int), ("max_wait_ms", inputs.max_wait_ms, float),
             ("load", inputs.loads, int if closed else float))
    if inputs.search_load is not None:  # a capacity search chooses its own loads
        lists = lists[:2]
        data["search"] = {"load": inputs.search_load, "budget_s": inputs.budget_min * 60}
        if not inputs.budget_min > 0:
            errors["budget"] = "the time budget must be more than 0 minutes"
    for field, text, kind in lists:
        try:
            data[field] = parse_numbers(text, kind)
        except ValueError as exc:
            errors[field] = str(exc)
    try:
        data["max_num_batched_tokens"] = parse_budgets(inputs.token_budgets)
    except ValueError as exc:
        errors["max_num_batched_tokens"] = str(exc)
    try:
        data["replicas"] = parse_numbers(inputs.replicas, int)
        if max(data["replicas"]) > 1:
            data["routers"] = list(inputs.routers)
    except ValueError as exc:
        errors["replicas"] = str(exc)
    if inputs.search_load is not None:
        if inputs.search_load == "rate":
            data["burstiness"] = inputs.burstiness
        return data
    data[inputs.load_mode] = data.pop("load", None)
    if inputs.load_mode == "rate":
        data["burstiness"] = inputs.burstiness
    return data
