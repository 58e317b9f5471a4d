"""Render a Recommendation as a config for tradeoff itself or for a real server: pure strings.

Formats (`FORMATS`): `json` and `yaml` (tradeoff's own document, read back by
`tradeoff serve --config` and `tradeoff trial --config`), `vllm` (a `vllm serve` command line),
`triton` (a config.pbtxt fragment), `ray-serve` (a Python deployment), `torchserve`
(model-config.yaml). Every format carries the expected metrics, the SLOs and the provenance;
where a server lacks a knob, a comment says so rather than inventing a mapping.

A bare `--target` run (device `server at URL (engine version)`, provenance.py) measured a server
batching by its own settings: its export sets no knob (json / yaml: `server:` for `engine:`;
other formats: comments only). `--engine` / `--server-cmd` runs set the knobs and name the server.

The json / yaml document (schema version 1):

    version: 1
    engine:                      # what `tradeoff serve` / `tradeoff trial` read back
      model: str                 # HF id, local path or builtin:tiny
      policy: static | continuous | adaptive
      ttft_slo_ms, tpot_slo_ms: float   # adaptive only: the targets it steers by
      max_batch_size: int >= 1
      max_wait_ms: float >= 0
      max_num_batched_tokens: int >= 1   # only when a prefill token budget was measured
    load: {concurrency: int} | {rate: float, burstiness: float}   # as measured
    expected_metrics: {...}      # means over repetitions, nested like `tradeoff trial --json`
    slos: [{metric, percentile, max_ms, value, passed, margin_ms}, ...]
    feasible: bool               # false: the nearest miss, no config met the SLOs
    explanation: str
    provenance: {model, device, sweep_id, date, profile, tradeoff_version}
"""

from __future__ import annotations

import json
import math
import re
import shlex
import textwrap
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime

import yaml

from common.numbers import rounded_tree
from common.records import TrialConfig
from experiments.analysis.recommend import Recommendation, config_to_dict, fmt_value, latency_label
from experiments.export.read import load_exported_config  # noqa: F401 (callers import it from here)
from experiments.export.scale import (
    engine_fields,
    ray_serve_notes,
    ray_serve_options,
    torchserve_workers,
    triton_instances,
    vllm_flags,
)
from experiments.export.server import (
    RELAUNCH_PORT,
    measured_on,
    relaunch_command,
    vllm_budget_note,
    vllm_wait_note,
)
from experiments.run.provenance import batches_by_itself, is_server

FORMATS: tuple[str, ...] = ("json", "yaml", "vllm", "triton", "ray-serve", "torchserve")
PROVENANCE_KEYS: tuple[str, ...] = (
    "model", "device", "sweep_id", "date", "profile", "tradeoff_version",
    "engine",  # {name, version, command} of a server tradeoff started (None: its own engine)
)
_REQUIRED_PROVENANCE = PROVENANCE_KEYS[:4]  # profile and version may be unknown (None)
SCHEMA_VERSION = 1
_SERVER_NAMES = {"vllm": "vLLM", "triton": "Triton", "ray-serve": "Ray Serve", "torchserve": "TorchServe"}
_PER_REQUEST = (
    "measured with continuous (iteration-level) batching, but {server} batches per request "
    "(a batch runs to completion before the next forms), so the measured numbers won't "
    "transfer exactly; re-measure against the real server."
)


def export_config(rec: Recommendation, fmt: str, provenance: dict) -> str:
    """The recommendation rendered in `fmt` (one of FORMATS), with metrics, SLOs and provenance."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if rec.config is None:
        raise ValueError(f"nothing to export: {rec.explanation}")
    provenance = _checked_provenance(provenance)
    if batches_by_itself(provenance["device"]):
        return _render_server_own(rec, fmt, provenance)
    if rec.config.policy == "adaptive" and fmt not in ("json", "yaml"):
        return _render_nearest_fixed(rec, fmt, provenance)
    return _RENDERERS[fmt](rec, provenance)


def nearest_fixed_config(config: TrialConfig) -> TrialConfig:
    """The fixed config closest to an adaptive one: continuous batching at its cap and wait."""
    return replace(config, policy="continuous")


def _render_nearest_fixed(rec: Recommendation, fmt: str, provenance: dict) -> str:
    # Servers other than tradeoff's own have no SLO-driven cap and wait: say so, export the nearest.
    c = _config(rec)
    fixed = nearest_fixed_config(c)
    server = _SERVER_NAMES.get(fmt, fmt)
    note = (f"policy adaptive has no {server} equivalent: it sets the batch cap (up to "
            f"{c.batch_size}) and the batching wait (up to {c.max_wait_ms:g} ms) at run time from the "
            "queue, recent step times and the TTFT/TPOT SLOs. Below is the nearest fixed config, "
            f"continuous batch {fixed.batch_size}, wait {fixed.max_wait_ms:g} ms (the adaptive "
            "policy's ceiling); its metrics were not measured: re-measure it with "
            f"`tradeoff trial --policy continuous --batch-size {fixed.batch_size} "
            f"--max-wait-ms {fixed.max_wait_ms:g}`, or compare the sweep's fixed configs.")
    return _comments([note]) + _RENDERERS[fmt](replace(rec, config=fixed), provenance)


def _checked_provenance(provenance: dict) -> dict:
    missing = [k for k in _REQUIRED_PROVENANCE if provenance.get(k) in (None, "")]
    if missing:
        raise ValueError(f"export provenance lacks {', '.join(missing)}")
    return _plain_dict({**dict.fromkeys(PROVENANCE_KEYS), **provenance})


def _plain_dict(mapping: dict) -> dict:
    return {str(k): _plain(v) for k, v in mapping.items()}


def _plain(value: object) -> object:
    # Only JSON scalars travel; dates become ISO strings, NaN/inf become null.
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return _plain_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def config_document(rec: Recommendation, provenance: dict) -> dict:
    """The json / yaml document described in the module docstring."""
    full = rec.to_dict()
    config = full["config"]
    engine = {"model": provenance["model"], "policy": config["policy"],
              "max_batch_size": config["batch_size"], "max_wait_ms": config["max_wait_ms"]}
    if config["policy"] == "adaptive":  # the targets it steers by, for `tradeoff serve --config`
        engine.update({f"{c['metric'].removesuffix('_ms')}_slo_ms": c["max_ms"] for c in full["slos"]
                       if c["metric"] in ("ttft_ms", "tpot_ms")})
    # `tradeoff serve --config` reads these back; absent: the engine's default.
    engine.update({k: config[k] for k in ("max_num_batched_tokens", "prefix_caching")
                   if config.get(k) is not None})
    if rec.config is not None and rec.config.replicas > 1:
        engine.update(engine_fields(rec.config))
    load = {k: v for k, v in config.items() if k in ("concurrency", "rate", "burstiness", "speedup")}
    return _plain_dict({
        "version": SCHEMA_VERSION, "engine": engine, "load": load,
        # Measurements to 3 significant digits: a 17-digit float claims a precision no trial has.
        "expected_metrics": rounded_tree(full["metrics"]), "slos": _rounded_slos(full["slos"]),
        "feasible": rec.feasible, "explanation": rec.explanation, "provenance": provenance,
    })


def _rounded_slos(slos: list[dict]) -> list[dict]:
    # The thresholds are the user's own numbers and stay exact; what was measured is rounded.
    return [{k: rounded_tree(v) if k in ("value", "margin_ms") else v for k, v in c.items()}
            for c in slos]


def _render_json(rec: Recommendation, provenance: dict) -> str:
    return json.dumps(config_document(rec, provenance), indent=2, allow_nan=False) + "\n"


def _render_yaml(rec: Recommendation, provenance: dict) -> str:
    head = _comments([
        "tradeoff config: run it with `tradeoff serve --config FILE` or "
        "`tradeoff trial --config FILE`.",
        *_warning(rec),
    ])
    return head + yaml.safe_dump(config_document(rec, provenance), sort_keys=False)


def _comments(notes: list[str]) -> str:
    """Notes as `# ` comment lines wrapped at 96 columns (no line breaks survive inside)."""
    lines = [line for note in notes
             for line in textwrap.wrap(" ".join(note.split()), 96, break_on_hyphens=False)]
    return "".join(f"# {line}\n" for line in lines)


def _warning(rec: Recommendation) -> list[str]:
    if rec.feasible:
        return []
    return ["WARNING: no measured config met the SLOs; this is the nearest miss."]


def _common_notes(rec: Recommendation, provenance: dict, target: str) -> list[str]:
    p = provenance
    return [
        f"tradeoff recommendation for {target}: {rec.explanation}",
        *_warning(rec),
        f"provenance: model {p['model']}, device {p['device']}, sweep {p['sweep_id']}, "
        f"{p['date']}, profile {p['profile'] or 'unknown'}, "
        f"tradeoff {p['tradeoff_version'] or 'unknown'}.",
        _expected_note(rec, p),
        *[_slo_note(c) for c in rec.to_dict()["slos"]],
    ]


_EXPECTED = (
    ("ttft_ms_p50", "p50 TTFT {} ms"), ("ttft_ms_p90", "p90 TTFT {} ms"),
    ("tpot_ms_p90", "p90 TPOT {} ms"), ("e2e_ms_p90", "p90 E2E {} ms"),
    ("output_tokens_per_s", "{} output tokens/s"), ("requests_per_s", "{} req/s"),
    ("goodput_rps", "goodput {} req/s"),
)


def _expected_note(rec: Recommendation, provenance: dict) -> str:
    n = rec.point.n if rec.point else 1
    parts = [text.format(fmt_value(v)) for key, text in _EXPECTED
             if (v := rec.metrics.get(key)) is not None]
    runs = f"mean of {n} runs" if n > 1 else "1 run"
    load = _load_words(_config(rec))
    return f"expected ({runs} on {measured_on(provenance)}, {load}): {', '.join(parts)}."


def _slo_note(check: dict) -> str:
    label = latency_label(f"{check['metric']}_{check['percentile']}")
    verdict = "met" if check["passed"] else "MISSED"
    value = "unmeasured" if check["value"] is None else f"{fmt_value(check['value'])} ms"
    return f"SLO {label} <= {fmt_value(check['max_ms'])} ms: {verdict} ({value})."


def _load_words(config: TrialConfig) -> str:
    load = config_to_dict(config)
    if "concurrency" in load:
        return f"closed loop at concurrency {load['concurrency']}"
    if "speedup" in load:
        return f"trace replay at {load['speedup']:g}x"
    return f"open loop at {load['rate']:g} req/s, burstiness {load['burstiness']:g}"


def _config(rec: Recommendation) -> TrialConfig:
    if rec.config is None:  # export_config checked; this keeps the type honest
        raise ValueError(f"nothing to export: {rec.explanation}")
    return rec.config


def _render_vllm(rec: Recommendation, provenance: dict) -> str:
    c = _config(rec)
    notes = [*_common_notes(rec, provenance, "vLLM"),
             f"--max-num-seqs {c.batch_size}: the most sequences vLLM runs in one iteration, "
             "tradeoff's max batch size.",
             vllm_wait_note(c.max_wait_ms),
             vllm_budget_note(c.max_num_batched_tokens, is_server(provenance["device"])),
             f"The load ({_load_words(c)}) is a client-side setting; vLLM has no flag for it."]
    if c.policy != "continuous":
        notes.append("policy static has no vLLM equivalent: vLLM always batches continuously "
                     "(iteration-level), so the measured static-batching numbers won't transfer.")
    model = str(provenance["model"])
    if model.startswith("builtin:"):
        notes.append(f"{model} is tradeoff's built-in test model; put a Hugging Face model id.")
    budget = c.max_num_batched_tokens
    chunked = "" if budget is None else f" --max-num-batched-tokens {budget} --enable-chunked-prefill"
    if c.prefix_caching is not None:
        chunked += " --enable-prefix-caching" if c.prefix_caching else " --no-enable-prefix-caching"
        notes.append(f"prefix caching {'on' if c.prefix_caching else 'off'} as measured "
                     "(vLLM's automatic prefix caching; on by default in its V1 engine).")
    dp_flag, dp_notes = vllm_flags(c)
    notes.extend(dp_notes)
    started = provenance.get("engine")
    if started and started.get("name") == "vllm" and started.get("command"):
        notes.append(f"the command measured: {started['command']}. Below it is again, listening "
                     f"on port {RELAUNCH_PORT}.")
        return _comments(notes) + relaunch_command(started["command"]) + "\n"
    return (_comments(notes)
            + f"vllm serve {shlex.quote(model)} --max-num-seqs {c.batch_size}{chunked}{dp_flag}\n")


def _budget_notes(config: TrialConfig, server: str, nearest: str | None = None) -> list[str]:
    """Say that a request-level batcher has no prefill token budget, instead of inventing one."""
    if config.max_num_batched_tokens is None:
        return []
    near = f" {nearest}" if nearest else ""
    return [f"max_num_batched_tokens {config.max_num_batched_tokens} (chunked prefill) has no "
            f"equivalent in {server}: it runs each batch's prompts whole.{near}"]


def _render_triton(rec: Recommendation, provenance: dict) -> str:
    c = _config(rec)
    delay_us = round(c.max_wait_ms * 1000)
    notes = [*_common_notes(rec, provenance, "Triton"),
             "A config.pbtxt fragment: merge it into your model's configuration "
             "(name, backend, inputs and outputs stay yours).",
             "No preferred_batch_size, so like tradeoff's static policy Triton forms batches "
             "as large as possible up to max_batch_size within the queue delay.",
             *_per_request_notes(rec, "Triton's dynamic batcher"),
             *_budget_notes(c, "Triton's dynamic batcher", "With the TensorRT-LLM backend the "
                            "nearest knob is its max_num_tokens (engine build / runtime)."),
             "LLM backends with in-flight batching (TensorRT-LLM, the vLLM backend) have their "
             "own batching settings, which take precedence."]
    instances, instance_notes = triton_instances(c)
    body = (f"max_batch_size: {c.batch_size}\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n") + instances
    return _comments(notes + instance_notes) + body


def _per_request_notes(rec: Recommendation, server: str) -> list[str]:
    config = _config(rec)
    notes = [_PER_REQUEST.format(server=server)] if config.policy == "continuous" else []
    if config.prefix_caching:
        notes.append(f"prefix caching (measured on) has no equivalent in {server}: it recomputes "
                     "every prompt, so later turns and shared prefixes cost more than measured.")
    return notes


def _render_ray_serve(rec: Recommendation, provenance: dict) -> str:
    notes = [*_common_notes(rec, provenance, "Ray Serve"),
             "max_ongoing_requests is set to max_batch_size: a replica must accept at least "
             "that many requests at once for a full batch to form.",
             *_per_request_notes(rec, "Ray Serve's @serve.batch"),
             *_budget_notes(_config(rec), "Ray Serve's @serve.batch")]
    c = _config(rec)
    timeout_s = round(c.max_wait_ms / 1000, 9)
    return _comments(notes + ray_serve_notes(c)) + _RAY_TEMPLATE.format(
        batch=c.batch_size, timeout_s=repr(timeout_s), model=repr(str(provenance["model"])),
        replicas=ray_serve_options(c))


_RAY_TEMPLATE = '''from ray import serve


@serve.deployment(max_ongoing_requests={batch}{replicas})
class Generator:
    def __init__(self) -> None:
        self.model_id = {model}  # load the model here

    @serve.batch(max_batch_size={batch}, batch_wait_timeout_s={timeout_s})
    async def generate(self, prompts: list[str]) -> list[str]:
        raise NotImplementedError("run one batched generate call over all prompts")

    async def __call__(self, request) -> str:
        return await self.generate((await request.json())["prompt"])


app = Generator.bind()
'''


def _render_torchserve(rec: Recommendation, provenance: dict) -> str:
    c = _config(rec)
    delay_ms = math.floor(c.max_wait_ms + 0.5)  # TorchServe takes whole milliseconds
    workers, worker_notes = torchserve_workers(c)
    fields = {"minWorkers": workers, "maxWorkers": workers,
              "batchSize": c.batch_size, "maxBatchDelay": delay_ms}
    name = re.sub(r"[^\w.-]", "_", str(provenance["model"]).rsplit("/", 1)[-1])
    notes = [*_common_notes(rec, provenance, "TorchServe"),
             "model-config.yaml; " + worker_notes[0],
             *_torchserve_rounding(c.max_wait_ms, delay_ms),
             *_per_request_notes(rec, "TorchServe"),
             *_budget_notes(c, "TorchServe")]
    entry = {name: {"1.0": {"marName": f"{name}.mar", **fields}}}
    tail = ["Or in config.properties:", f"models={json.dumps(entry)}"]
    body = yaml.safe_dump(fields, sort_keys=False)
    return _comments(notes) + body + "".join(f"# {line}\n" for line in tail)


def _torchserve_rounding(wait_ms: float, delay_ms: int) -> list[str]:
    if wait_ms == delay_ms:
        return []
    return [f"maxBatchDelay is whole milliseconds: {wait_ms:g} ms rounded to {delay_ms} ms."]


def _render_server_own(rec: Recommendation, fmt: str, provenance: dict) -> str:
    """A bare --target's measurement: what the server did at the load, and no knob, since the
    stored ones are placeholders (grid.SERVER_OWN_KNOBS), not its settings."""
    p, verdict = provenance, "met" if rec.feasible else "came nearest to"
    said = (f"{p['model']} on {p['device']}, batching by its own settings, {verdict} the "
            f"{p['profile'] or 'profile'} SLOs under {_load_words(_config(rec))}.")
    if fmt in ("json", "yaml"):
        doc = config_document(rec, provenance)
        server = {"measured": p["device"], "model": p["model"],
                  "batching": "the server's own settings; tradeoff set none of its knobs"}
        doc = {("server" if k == "engine" else k): (server if k == "engine" else v)
               for k, v in doc.items()} | {"explanation": said}
        if fmt == "json":
            return json.dumps(doc, indent=2, allow_nan=False) + "\n"
        head = ["tradeoff measurement of a running server: a record of what was measured, not a "
                "config for `tradeoff serve` or `tradeoff trial --config`.", *_warning(rec)]
        return _comments(head) + yaml.safe_dump(doc, sort_keys=False)
    server = _SERVER_NAMES.get(fmt, fmt)
    notes = [f"tradeoff measurement, no {server} config: {said}",
             *_common_notes(rec, provenance, server)[1:],
             f"No {server} config to export: tradeoff drove a running server (--target) and set "
             "none of its batching knobs, so none was measured; the numbers above are that "
             "server's, with the settings it ran with. To measure batching knobs, start the server "
             "per config with `tradeoff sweep --engine` or `--server-cmd`."]
    return _comments(notes)


_RENDERERS: dict[str, Callable[[Recommendation, dict], str]] = {
    "json": _render_json, "yaml": _render_yaml, "vllm": _render_vllm,
    "triton": _render_triton, "ray-serve": _render_ray_serve, "torchserve": _render_torchserve,
}
