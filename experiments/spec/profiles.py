"""Workload profiles: request lengths, the default load, SLOs and the objective, from YAML.

Profiles are validated at the edge (pydantic, unknown fields rejected) and every error is one
line naming the field and the fix. SLOs are either absolute (`max_ms`) or relative to the
unloaded baseline (`max_x_baseline`), so one built-in profile fits a tiny CPU model and a 7B GPU
model alike; `resolve_slos` turns them into absolute `SLO`s once the baseline is known.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from common.records import SLO
from experiments.spec.arrivals import BUILTIN_TRACES, RateSchedule, TraceArrival
from experiments.spec.profile_errors import ErrorSchema, yaml_error

# The experiments package's folder: its profiles ship inside it (package data, experiments/profiles/).
_PACKAGE_DIR = Path(__file__).resolve().parent.parent

SLO_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "e2e_ms")
TRACE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".csv.gz", ".jsonl.gz")
SLO_PERCENTILES: tuple[str, ...] = ("p50", "p90", "p95", "p99")
OBJECTIVES: tuple[str, ...] = ("max_goodput", "max_throughput")


class ProfileError(ValueError):
    """A profile that cannot be loaded or used; the one-line message names the field and the fix."""


# One request's tokens, at most: far beyond any context window, but a typo (1e11) must not
# make the load generator build a prompt that exhausts memory.
MAX_REQUEST_TOKENS = 1 << 24


class _Strict(BaseModel):
    # No NaN or infinity: an infinite rate or SLO is a typo, not a workload.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class FixedLength(_Strict):
    """Every request has the same length."""

    kind: Literal["fixed"]
    value: int = Field(ge=1, le=MAX_REQUEST_TOKENS)


class UniformLength(_Strict):
    """Integer lengths uniform in [min, max], both included."""

    kind: Literal["uniform"]
    min: int = Field(ge=1)
    max: int = Field(ge=1, le=MAX_REQUEST_TOKENS)

    @model_validator(mode="after")
    def _check_range(self) -> UniformLength:
        return _check_min_max(self)


class NormalLength(_Strict):
    """Normal(mean, std), rounded and clipped to [min, max]."""

    kind: Literal["normal"]
    mean: float = Field(gt=0)
    std: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(ge=1, le=MAX_REQUEST_TOKENS)

    @model_validator(mode="after")
    def _check_range(self) -> NormalLength:
        return _check_min_max(self)


class LogNormalLength(_Strict):
    """Lognormal with this mean and std (of the lengths, not of their log), rounded and clipped."""

    kind: Literal["lognormal"]
    mean: float = Field(gt=0)
    std: float = Field(ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(ge=1, le=MAX_REQUEST_TOKENS)

    @model_validator(mode="after")
    def _check_range(self) -> LogNormalLength:
        return _check_min_max(self)


class ChoiceLength(_Strict):
    """One of `values` with probabilities proportional to `weights` (default equal): long tails."""

    kind: Literal["choice"]
    values: list[Annotated[int, Field(ge=1, le=MAX_REQUEST_TOKENS)]] = Field(min_length=1)
    weights: list[Annotated[float, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _check_weights(self) -> ChoiceLength:
        if self.weights is not None and len(self.weights) != len(self.values):
            raise ValueError(f"weights needs one weight per value ({len(self.values)}), "
                             f"got {len(self.weights)}")
        if self.weights is not None and sum(self.weights) <= 0:
            raise ValueError("weights must not all be 0")
        return self


LengthDist = Annotated[
    FixedLength | UniformLength | NormalLength | LogNormalLength | ChoiceLength,
    Field(discriminator="kind"),
]


class FixedThink(_Strict):
    """The same think time (s) before every turn after the first."""

    kind: Literal["fixed"]
    value: float = Field(ge=0, le=3600)


class UniformThink(_Strict):
    """Think times uniform in [min, max] seconds."""

    kind: Literal["uniform"]
    min: float = Field(ge=0)
    max: float = Field(ge=0, le=3600)

    @model_validator(mode="after")
    def _check_range(self) -> UniformThink:
        return _check_min_max(self)


class ExponentialThink(_Strict):
    """Exponential think times with this mean (s): memoryless users."""

    kind: Literal["exponential"]
    mean: float = Field(gt=0, le=3600)


ThinkTime = Annotated[FixedThink | UniformThink | ExponentialThink, Field(discriminator="kind")]


def _check_min_max(dist: Any) -> Any:
    if dist.max < dist.min:
        raise ValueError(f"max ({dist.max}) must be >= min ({dist.min})")
    return dist


class ClosedArrival(_Strict):
    """Closed loop: `concurrency` virtual users, each sends its next request when one completes."""

    mode: Literal["closed"]
    concurrency: int = Field(ge=1)

    @property
    def label(self) -> str:
        return f"concurrent@{self.concurrency}"


class OpenArrival(_Strict):
    """Open loop: gamma arrivals at `rate` per second; burstiness 1 = Poisson, < 1 burstier."""

    mode: Literal["open"]
    rate: float = Field(gt=0)
    burstiness: float = Field(default=1.0, gt=0)
    schedule: RateSchedule | None = None  # time-varying rate: steps, ramp or periodic (x rate)

    @property
    def label(self) -> str:
        kind = "poisson" if self.burstiness == 1 else f"gamma({self.burstiness:g})"
        return f"{kind}@{self.rate:.2f}" + (f"/{self.schedule.kind}" if self.schedule else "")


Arrival = Annotated[ClosedArrival | OpenArrival | TraceArrival, Field(discriminator="mode")]


class SessionSpec(_Strict):
    """Multi-turn conversations: each turn re-sends the history (earlier prompts and responses)
    plus a new message of `prompt_tokens`; the next turn follows the response after a think time."""

    turns: LengthDist  # turns per conversation
    think_time_s: ThinkTime = Field(default_factory=lambda: FixedThink(kind="fixed", value=0.0))


class SharedPrefix(_Strict):
    """`num_prefixes` distinct prefixes (system prompts, RAG documents) of `prefix_tokens` each;
    every request (a session: its first turn) starts with one of them, drawn uniformly."""

    num_prefixes: int = Field(ge=1, le=1 << 16)
    prefix_tokens: int = Field(ge=1, le=MAX_REQUEST_TOKENS)


class SLOSpec(_Strict):
    """`metric` at `percentile` <= max_ms, or <= max_x_baseline x the unloaded p50."""

    percentile: Literal["p50", "p90", "p95", "p99"]
    max_ms: float | None = Field(default=None, gt=0)
    max_x_baseline: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_one_threshold(self) -> SLOSpec:
        if (self.max_ms is None) == (self.max_x_baseline is None):
            raise ValueError("set exactly one of max_ms (absolute) or max_x_baseline "
                             "(a multiple of the unloaded baseline)")
        return self

    @property
    def is_relative(self) -> bool:
        return self.max_x_baseline is not None


class Profile(_Strict):
    """A workload: who sends what, how fast by default, and what 'good enough' means."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    # Required unless the arrival replays a trace (whose rows carry the lengths).
    prompt_tokens: LengthDist | None = None
    output_tokens: LengthDist | None = None
    arrival: Arrival
    slos: dict[Literal["ttft_ms", "tpot_ms", "e2e_ms"], SLOSpec] = Field(default_factory=dict)
    objective: Literal["max_goodput", "max_throughput"] = Field(
        "max_goodput", validate_default=True)
    session: SessionSpec | None = None  # multi-turn conversations (closed or open arrival)
    shared_prefix: SharedPrefix | None = None
    warmup_requests: int = Field(default=4, ge=0)
    # Goodput capacity (DistServe): the largest load whose share of requests meeting every SLO
    # is at least this.
    min_slo_attainment: float = Field(default=0.9, gt=0, le=1)

    @field_validator("objective")
    @classmethod
    def _check_objective(cls, objective: str, info: ValidationInfo) -> str:
        # A field validator (not a model one) so the error names `objective`.
        if objective == "max_goodput" and not info.data.get("slos"):
            raise ValueError("max_goodput needs at least one SLO; "
                             "add slos or use objective: max_throughput")
        return objective

    @model_validator(mode="after")
    def _check_lengths(self) -> Profile:
        for name in ("prompt_tokens", "output_tokens"):
            if getattr(self, name) is None and not self.is_trace:
                raise ValueError(f"{name} is required (unless arrival.mode is trace); "
                                 "add e.g. {kind: fixed, value: 64}")
        return self

    @field_validator("session", "shared_prefix")
    @classmethod
    def _check_not_trace(cls, value: Any, info: ValidationInfo) -> Any:
        # A trace's rows carry their own lengths (and Mooncake's hash_ids their prefix reuse).
        if value is not None and isinstance(info.data.get("arrival"), TraceArrival):
            raise ValueError(f"a trace replay has no {info.field_name}: its rows say what is "
                             "sent; drop it, or use arrival mode closed or open")
        return value

    @property
    def is_trace(self) -> bool:
        """Whether this profile replays a trace (lengths and arrivals from its rows)."""
        return isinstance(self.arrival, TraceArrival)


# -- loading ------------------------------------------------------------------------------------

# How a profile's validation errors are told: its tagged sections and their models.
_SCHEMA = ErrorSchema(
    root=Profile,
    union_fields={"prompt_tokens": "kind", "output_tokens": "kind", "arrival": "mode"},
    tags={"kind": {"fixed": FixedLength, "uniform": UniformLength, "normal": NormalLength,
                   "lognormal": LogNormalLength, "choice": ChoiceLength},
          "mode": {"closed": ClosedArrival, "open": OpenArrival, "trace": TraceArrival}},
    sections={"slos": SLOSpec, "session": SessionSpec, "shared_prefix": SharedPrefix})


def list_builtin_profiles() -> list[str]:
    """Names of the profiles shipped with the package, sorted."""
    folder = _PACKAGE_DIR.joinpath("profiles")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str, user_profiles: dict[str, str] | None = None) -> Profile:
    """A built-in profile by name, else a user profile (name -> YAML text), else a .yaml path,
    else a trace file (.csv / .jsonl) replayed with default settings (`trace_file_profile`)."""
    return check_trace(_load_any(name_or_path, user_profiles))


def _load_any(name_or_path: str, user_profiles: dict[str, str] | None) -> Profile:
    if name_or_path.endswith(TRACE_SUFFIXES):
        return trace_file_profile(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return _load_path(Path(name_or_path))
    if name_or_path in list_builtin_profiles():
        text = _PACKAGE_DIR.joinpath(f"profiles/{name_or_path}.yaml").read_text("utf-8")
        return parse_profile_yaml(text, name_or_path)
    if user_profiles and name_or_path in user_profiles:
        return parse_profile_yaml(user_profiles[name_or_path], name_or_path)
    raise ProfileError(_unknown_message(name_or_path, user_profiles))


def trace_file_profile(path: str) -> Profile:
    """A profile replaying a user's trace file: 60 s from its start at 1x, lengths as recorded,
    SLOs as the chat profile's (p90 TTFT <= 5x and TPOT <= 3x the unloaded baseline)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).name)
    return Profile(
        name=stem, description=f"replay of the trace {path}",
        arrival=TraceArrival(mode="trace", trace=path),
        slos={"ttft_ms": SLOSpec(percentile="p90", max_x_baseline=5.0),
              "tpot_ms": SLOSpec(percentile="p90", max_x_baseline=3.0)})


def check_trace(profile: Profile) -> Profile:
    """Read a trace profile's trace now, so a bad file fails before anything runs (cached)."""
    if isinstance(profile.arrival, TraceArrival) and profile.arrival.trace not in BUILTIN_TRACES:
        from experiments.spec.traces import TraceError, load_trace

        try:
            load_trace(profile.arrival.trace, profile.arrival.columns, profile.arrival.time_unit)
        except TraceError as exc:
            raise ProfileError(f"profile '{profile.name}': {exc}") from None
    return profile


def _load_path(path: Path) -> Profile:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ProfileError(f"profile '{path}': cannot read the file ({exc.strerror or exc}); "
                           f"built-in profiles: {', '.join(list_builtin_profiles())}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"profile '{path}': not UTF-8 text; give a profile YAML file") from None
    return parse_profile_yaml(text, str(path))


def _unknown_message(name: str, user_profiles: dict[str, str] | None) -> str:
    msg = f"unknown profile '{name}'; built-in profiles: {', '.join(list_builtin_profiles())}"
    if user_profiles:
        msg += f"; your profiles: {', '.join(sorted(user_profiles))}"
    return msg + " (or pass a .yaml path, or a .csv / .jsonl trace to replay)"


def parse_profile_yaml(text: str, source: str) -> Profile:
    """Parse and validate one profile; errors are a single ProfileError line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile '{source}': {yaml_error(exc)}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile '{source}': must be a YAML mapping of fields "
                           f"(name, prompt_tokens, ...), got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile '{source}': {_SCHEMA.message(exc, data)}") from None


# -- SLOs ---------------------------------------------------------------------------------------


def resolve_slos(profile: Profile, baseline: dict[str, float] | None) -> list[SLO]:
    """Absolute SLOs: relative ones are max_x_baseline x the unloaded p50 in `baseline`."""
    return [_resolve_one(profile.name, metric, profile.slos[metric], baseline)
            for metric in SLO_METRICS if metric in profile.slos]


def needs_baseline(profile: Profile) -> bool:
    """Whether any SLO is relative, so an unloaded baseline must be measured first."""
    return any(spec.is_relative for spec in profile.slos.values())


def _resolve_one(name: str, metric: str, spec: SLOSpec, baseline: dict[str, float] | None) -> SLO:
    if spec.max_ms is not None:
        return SLO(metric, spec.percentile, spec.max_ms)
    assert spec.max_x_baseline is not None  # validated: exactly one threshold is set
    base_ms = (baseline or {}).get(metric)
    if base_ms is None:
        raise ProfileError(
            f"profile '{name}': slos.{metric} is relative (max_x_baseline) but no unloaded "
            f"{metric} baseline was measured; measure one (measure_baseline) or set max_ms")
    return SLO(metric, spec.percentile, spec.max_x_baseline * base_ms)
