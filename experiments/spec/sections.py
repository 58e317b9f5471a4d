"""The sections of a sweep spec: what is swept on the server (knobs), the workload and its load
levels (load), what is measured and how it is started (target), where trials run (execution),
and a capacity search. Each section validates its own fields; checks across sections live on
`grid.SweepSpec`.

Flat specs (every field at the top, as specs were stored, written in sweep.yaml and built by the
CLI and the Run page before there were sections) stay accepted: `nest` moves each flat key into
its section, and `flat_name` names a nested field by its flat key, so error messages read as they
always did."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.vocab import EngineName, LoadAxis, Policy
from engine.routing import check_replicas
from experiments.targets.server_cmd import ServerCmdError, check_server_cmd

# No NaN or infinity anywhere: an infinite rate or wait would never finish a trial.
_SECTION = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class KnobsSpec(BaseModel):
    """The server settings swept, one value per server: each distinct combination is a config."""

    model_config = _SECTION

    policies: list[Policy] = Field(
        default=["static", "continuous"], min_length=1)
    batch_sizes: list[int] = Field(default=[1, 4, 16], min_length=1)
    max_wait_ms: list[float] = Field(default=[0.0, 10.0], min_length=1)
    # Prefill token budgets (None = no chunking); a budget applies to the continuous policy only.
    max_num_batched_tokens: list[int | None] = Field(default=[None], min_length=1)
    # Reuse of computed prompt blocks across requests; None: the engine's default (engines.py).
    prefix_caching: list[bool | None] = Field(default=[None], min_length=1)
    replicas: list[int] = Field(default=[1], min_length=1)  # engine replicas behind a router
    routers: list[str] | None = None  # for replica counts > 1; default: common.vocab.DEFAULT_ROUTER

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("every batch size must be >= 1")
        return sorted(set(v))

    @field_validator("max_wait_ms")
    @classmethod
    def _non_negative_waits(cls, v: list[float]) -> list[float]:
        if any(not w >= 0 for w in v):
            raise ValueError("every max wait must be >= 0 ms")
        return sorted(set(v))

    @field_validator("max_num_batched_tokens")
    @classmethod
    def _positive_budgets(cls, v: list[int | None]) -> list[int | None]:
        if any(b is not None and b < 1 for b in v):
            raise ValueError("every max_num_batched_tokens must be >= 1 or none")
        budgets = sorted({b for b in v if b is not None})
        return ([None] if None in v else []) + budgets

    @field_validator("replicas")
    @classmethod
    def _positive_replicas(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every replica count must be >= 1")
        return sorted(set(v))

    @field_validator("routers")
    @classmethod
    def _known_routers(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        for name in v:
            check_replicas(1, name)  # ConfigError: unknown router, naming the choices
        return list(dict.fromkeys(v))


class LoadSpec(BaseModel):
    """The workload (a profile, its SLOs) and the load levels it is measured at."""

    model_config = _SECTION

    profile: str = "chat"
    # Absolute SLOs in place of the profile's ({metric: {percentile, max_ms}}; sweep_profile).
    slos: dict[str, dict] | None = None
    concurrency: list[int] | None = None
    rate: list[float] | None = None
    speedup: list[float] | None = None  # trace replay: the trace profile's load axis
    trace_duration_s: float | None = Field(default=None, gt=0)  # replay window; default the profile's
    trace_start_s: float | None = Field(default=None, ge=0)
    burstiness: float = Field(default=1.0, gt=0)
    requests: int = Field(default=48, ge=1)
    repetitions: int = Field(default=1, ge=1, le=100)
    seed: int = 0

    @field_validator("concurrency")
    @classmethod
    def _positive_users(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(c < 1 for c in v)):
            raise ValueError("every concurrency must be >= 1")
        return None if v is None else sorted(set(v))

    @field_validator("rate")
    @classmethod
    def _positive_rates(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not r > 0 for r in v)):
            raise ValueError("every rate must be > 0 requests/s")
        return None if v is None else sorted(set(v))

    @field_validator("speedup")
    @classmethod
    def _positive_speedups(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not 0 < x < float("inf") for x in v)):
            raise ValueError("every speedup must be a finite number > 0")
        return None if v is None else sorted(set(v))


class TargetSpec(BaseModel):
    """What is measured: tradeoff's engine on a model, a running server (`url`), or a server
    tradeoff starts per config (`server_cmd` or an `engine` preset), and how that one starts."""

    model_config = _SECTION

    model: str = "builtin:tiny"
    device: str = "auto"
    dtype: str = "auto"
    kv_budget_tokens: int | None = Field(default=None, ge=1)
    url: str | None = Field(default=None, max_length=500)  # OpenAI-compatible base URL (--target)
    target_model: str | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tokenizer: str | None = None  # for external targets; default: the model's
    server_cmd: str | None = Field(default=None, max_length=2000)  # started per server config
    engine: EngineName | None = None  # a preset server per config
    server_timeout_s: float = Field(default=120.0, gt=0)
    # How a started server is launched (engines.check_launch): extra arguments (--engine only),
    # its environment, and the Python of the environment the engine lives in (`PY -m module`).
    engine_args: list[str] = Field(default_factory=list, max_length=100)
    engine_env: dict[str, str] = Field(default_factory=dict, max_length=100)
    engine_python: str | None = Field(default=None, max_length=1000)
    server_cpus: list[int] | None = Field(default=None, min_length=1, max_length=4096)  # the rest: the client

    @field_validator("server_cmd")
    @classmethod
    def _runnable_template(cls, v: str | None) -> str | None:
        if v is not None:
            try:  # quoting, placeholders and {port}, before anything is written
                check_server_cmd(v)
            except ServerCmdError as exc:
                raise ValueError(str(exc)) from None
        return v


class ExecutionSpec(BaseModel):
    """Where and how the trials run: this process or Ray workers, their time limit, calibration."""

    model_config = _SECTION

    executor: Literal["local", "ray"] = "local"  # where trials run: this process, or Ray workers
    ray_address: str | None = Field(default=None, max_length=500)  # None: a local cluster
    ray_cpus_per_trial: int = Field(default=1, ge=1)  # a CPU slot's cores (no GPU in the cluster)
    max_trial_s: float | None = Field(default=None, gt=0)
    calibrate: bool = False  # probe the first started server and predict every trial from the fit


class SearchSpec(BaseModel):
    """A capacity search instead of a load grid: per config, the largest load within the SLOs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    load: LoadAxis = "rate"  # speedup: a trace profile's axis
    budget_s: float = Field(default=600.0, gt=0)  # measurement time; a clean stop when spent
    start_load: float | None = Field(default=None, gt=0)  # default: 1 req/s, or batch-size users
    max_load: float | None = Field(default=None, gt=0)
    rel_tol: float = Field(default=0.1, gt=0, lt=1)  # rate resolution, relative
    max_repeats: int = Field(default=3, ge=1, le=20)  # repetitions of an undecided load
    # Repeat a load only while the repetitions left could decide it or reverse its verdict
    # (experiments/search/evidence.py, is_futile).
    # Searches stored before this spent every repetition; the store's version 6 says so.
    skip_futile_repeats: bool = True
    # An open-loop trial sends at least this many seconds of arrivals: above capacity the queue
    # needs time to grow, and a short burst looks carried (48 requests at 22 req/s "met" the
    # SLOs of a mock server that serves 18.6 req/s at most; its steady-state capacity is 13.9).
    min_span_s: float = Field(default=10.0, ge=0, le=600)
    # Per config; None (the default): no limit, the budget ends a search. Stored searches made
    # before this keep their 12.
    max_probes: int | None = Field(default=None, ge=1, le=1000)
    # Predict every config's capacity from a fit to the first trial's steps; start each search
    # there and measure only configs predicted at >= keep_ratio x the best (and each policy's best).
    predict: bool = True
    keep_ratio: float = Field(default=0.5, ge=0, le=1)


SECTIONS: dict[str, type[BaseModel]] = {"knobs": KnobsSpec, "load": LoadSpec, "target": TargetSpec,
                                        "execution": ExecutionSpec}
# (section, field) -> its flat key. Every field keeps its flat name but the URL: a section
# called `target` holding a field `target` would read `spec.target.target`.
_FLAT_OF: dict[tuple[str, str], str] = {(section, field): {"url": "target"}.get(field, field)
                                        for section, model in SECTIONS.items()
                                        for field in model.model_fields}
FLAT_FIELDS: dict[str, tuple[str, str]] = {key: where for where, key in _FLAT_OF.items()}


def _is_section(key: str, value: Any) -> bool:
    """A section given nested. `target` is also the flat URL key: a mapping (or the section
    itself) is the section, anything else the URL (a string, None, or a bad value to refuse)."""
    return key in SECTIONS and isinstance(value, dict | SECTIONS[key])


def flat_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Any spec input (flat, nested or a mix) with every field at its flat key; no validation.
    Flat keys win over the same field given in a section (`{**spec.model_dump(), "rate": ...}`
    overrides the dump). A key a section does not have stays as `section.key`, refused later."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if _is_section(key, value):
            items = value.items() if isinstance(value, dict) else dict(value).items()
            out.update({_FLAT_OF.get((key, k), f"{key}.{k}"): v for k, v in items})
    out.update({k: v for k, v in data.items() if not _is_section(k, v)})
    return out


def nest(data: dict[str, Any]) -> dict[str, Any]:
    """Any spec input -> {section: {field: value}} plus the top-level keys (name, search, and
    unknown ones, which the spec refuses by their flat name)."""
    out: dict[str, Any] = {}
    for key, value in flat_keys(data).items():
        section, _, inner = key.partition(".")
        if key in FLAT_FIELDS:
            section, field = FLAT_FIELDS[key]
            out.setdefault(section, {})[field] = value
        elif inner and section in SECTIONS:  # unknown in its section: refused as section.key
            out.setdefault(section, {})[inner] = value
        else:
            out[key] = value
    return out


# The flat fields in the order the flat spec declared them: of several errors, messages report
# the one the flat spec reported first. A field added since sorts after these, as would a
# field added at the end of the flat spec.
_REPORT_ORDER = {key: i for i, key in enumerate((
    "model", "device", "dtype", "profile", "policies", "batch_sizes", "max_wait_ms",
    "max_num_batched_tokens", "prefix_caching", "concurrency", "rate", "speedup",
    "trace_duration_s", "trace_start_s", "burstiness", "requests", "repetitions", "seed", "name",
    "kv_budget_tokens", "max_trial_s", "target", "target_model", "api_key_env", "tokenizer",
    "server_cmd", "engine", "server_timeout_s", "engine_args", "engine_env", "engine_python",
    "server_cpus", "calibrate", "slos", "search", "replicas", "executor", "ray_address",
    "ray_cpus_per_trial", "routers"))}


def first_reported(locs: list[tuple]) -> int:
    """Which of several error locations (as flat_name gives them) to report: the index of the
    first in the flat spec's order (the first given, among equals)."""
    ranks = [_REPORT_ORDER.get(loc[0], len(_REPORT_ORDER)) if loc else -1 for loc in locs]
    return ranks.index(min(ranks))


def flat_name(loc: tuple) -> tuple:
    """A validation error's location with a section's field named by its flat key:
    ("knobs", "batch_sizes", 0) -> ("batch_sizes", 0), as messages named it before sections."""
    if len(loc) >= 2 and (loc[0], loc[1]) in _FLAT_OF:
        return (_FLAT_OF[(loc[0], loc[1])], *loc[2:])
    return loc
