"""Reading an exported json / yaml document back (`tradeoff serve --config`, `tradeoff trial
--config`): every engine field validated, each error naming the field."""

from __future__ import annotations

import json
import math

import yaml

from common.vocab import POLICIES
from experiments.export.scale import exported_scale


def load_exported_config(text: str) -> dict:
    """Validate an exported json / yaml document; return policy, batch_size, max_wait_ms, model,
    the adaptive policy's ttft_slo_ms / tpot_slo_ms (None when absent), replicas, router and
    prefix_caching (None when absent: the engine's default, off)."""
    try:
        doc = _parse_document(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"exported config is not valid YAML or JSON: {exc}") from exc
    engine = doc.get("engine") if isinstance(doc, dict) else None
    server = doc.get("server") if isinstance(doc, dict) and engine is None else None
    if isinstance(server, dict):  # render.py's record of a bare --target: its knobs were its own
        raise ValueError(f"the document records a measurement of {server.get('measured')}, which "
                         "batched by its own settings, so it has no engine config to run; measure "
                         "that server again with `tradeoff trial --target URL`")
    if not isinstance(engine, dict):
        raise ValueError("exported config needs an `engine:` mapping with model, policy, "
                         "max_batch_size and max_wait_ms")
    return {"policy": _policy(engine), "batch_size": _batch_size(engine),
            "max_wait_ms": _max_wait_ms(engine), "model": _model(engine),
            "max_num_batched_tokens": _token_budget(engine),
            "prefix_caching": _prefix_caching(engine),
            **{k: _slo_target(engine, k) for k in ("ttft_slo_ms", "tpot_slo_ms")},
            **dict(zip(("replicas", "router"), exported_scale(engine), strict=True))}


def _prefix_caching(engine: dict) -> bool | None:
    value = engine.get("prefix_caching")
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"engine.prefix_caching must be true or false, got {value!r}")
    return value


def _slo_target(engine: dict, key: str) -> float | None:
    value = engine.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"engine.{key} must be a number of ms > 0, got {value!r}")
    return float(value)


def _parse_document(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:  # not JSON: YAML (a superset in practice) says what is wrong
        return yaml.safe_load(text)


def _policy(engine: dict) -> str:
    policy = engine.get("policy")
    if policy not in POLICIES:
        raise ValueError(f"engine.policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    return policy


def _batch_size(engine: dict) -> int:
    size = engine.get("max_batch_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"engine.max_batch_size must be an integer >= 1, got {size!r}")
    return size


def _max_wait_ms(engine: dict) -> float:
    wait = engine.get("max_wait_ms")
    valid = isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0
    if not valid or not math.isfinite(wait):
        raise ValueError(f"engine.max_wait_ms must be a number >= 0, got {wait!r}")
    return float(wait)


def _token_budget(engine: dict) -> int | None:
    budget = engine.get("max_num_batched_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"engine.max_num_batched_tokens must be an integer >= 1 or absent, got {budget!r}")
    return budget


def _model(engine: dict) -> str:
    model = engine.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"engine.model must be a non-empty string, got {model!r}")
    return model
