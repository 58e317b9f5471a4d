"""The sweep grid: a validated spec (CLI flags, `--config sweep.yaml`, the Run page) and the
ordered list of trials it expands to."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.records import TrialConfig
from common.vocab import DEFAULT_ROUTER, EngineName, LoadAxis, Policy
from engine.routing import check_replicas
from experiments.spec.grid_errors import GridError, grid_error
from experiments.targets.engines import check_launch, lacking_knobs
from experiments.targets.server_cmd import ServerCmdError, check_server_cmd

# A bare --target (no --server-cmd or --engine) batches by its own settings, which tradeoff
# neither sets nor knows. Its trials still need knob values (TrialConfig and the trials table have
# no "unknown"), so they record these placeholders, and readers that know the sweep is a bare
# target (SweepSpec.is_bare_target; its device `server at URL`) never show them as settings.
SERVER_OWN_KNOBS: dict[str, list] = {"policies": ["continuous"], "batch_sizes": [1], "max_wait_ms": [0.0]}
_KNOB_FLAGS = {"policies": "--policy", "batch_sizes": "--batch-sizes", "max_wait_ms": "--max-wait-ms",
               "max_num_batched_tokens": "--max-num-batched-tokens", "prefix_caching": "--prefix-caching"}


TYPICAL_PROBES = 12  # trials one config's search takes on the built-in engine, bracket and bisect


class SearchSpec(BaseModel):
    """A capacity search instead of a load grid: per config, the largest load within the SLOs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    load: LoadAxis = "rate"  # speedup: a trace profile's axis
    budget_s: float = Field(default=600.0, gt=0)  # measurement time; a clean stop when spent
    start_load: float | None = Field(default=None, gt=0)  # default: 1 req/s, or batch-size users
    max_load: float | None = Field(default=None, gt=0)
    rel_tol: float = Field(default=0.1, gt=0, lt=1)  # rate resolution, relative
    max_repeats: int = Field(default=3, ge=1, le=20)  # repetitions of an undecided load
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


class SweepSpec(BaseModel):
    """Everything that defines a sweep; stored as the sweep's grid so it can be resumed."""

    # No NaN or infinity anywhere: an infinite rate or wait would never finish a trial.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = "builtin:tiny"
    device: str = "auto"
    dtype: str = "auto"
    profile: str = "chat"
    policies: list[Policy] = Field(
        default=["static", "continuous"], min_length=1)
    batch_sizes: list[int] = Field(default=[1, 4, 16], min_length=1)
    max_wait_ms: list[float] = Field(default=[0.0, 10.0], min_length=1)
    # Prefill token budgets (None = no chunking); a budget applies to the continuous policy only.
    max_num_batched_tokens: list[int | None] = Field(default=[None], min_length=1)
    # Reuse of computed prompt blocks across requests; None: the engine's default (engines.py).
    prefix_caching: list[bool | None] = Field(default=[None], min_length=1)
    concurrency: list[int] | None = None
    rate: list[float] | None = None
    speedup: list[float] | None = None  # trace replay: the trace profile's load axis
    trace_duration_s: float | None = Field(default=None, gt=0)  # replay window; default the profile's
    trace_start_s: float | None = Field(default=None, ge=0)
    burstiness: float = Field(default=1.0, gt=0)
    requests: int = Field(default=48, ge=1)
    repetitions: int = Field(default=1, ge=1, le=100)
    seed: int = 0
    name: str | None = Field(default=None, max_length=200)
    kv_budget_tokens: int | None = Field(default=None, ge=1)
    max_trial_s: float | None = Field(default=None, gt=0)
    target: str | None = Field(default=None, max_length=500)  # OpenAI-compatible base URL
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
    calibrate: bool = False  # probe the first started server and predict every trial from the fit
    # Absolute SLOs in place of the profile's ({metric: {percentile, max_ms}}; sweep_profile).
    slos: dict[str, dict] | None = None
    search: SearchSpec | None = None  # set: search each config's capacity instead of a load grid
    replicas: list[int] = Field(default=[1], min_length=1)  # engine replicas behind a router
    executor: Literal["local", "ray"] = "local"  # where trials run: this process, or Ray workers
    ray_address: str | None = Field(default=None, max_length=500)  # None: a local cluster
    ray_cpus_per_trial: int = Field(default=1, ge=1)  # a CPU slot's cores (no GPU in the cluster)
    routers: list[str] | None = None  # for replica counts > 1; default: engine.routing.DEFAULT_ROUTER

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

    @model_validator(mode="after")
    def _budgets_fit_the_grid(self) -> SweepSpec:
        budgets = [b for b in self.max_num_batched_tokens if b is not None]
        if not budgets:
            return self
        if "continuous" not in self.policies:
            raise ValueError("max_num_batched_tokens needs the continuous policy; add it to policies")
        if min(budgets) < max(self.batch_sizes):  # as vLLM: each running row decodes one token
            raise ValueError(f"every max_num_batched_tokens must be >= the largest batch size "
                             f"({max(self.batch_sizes)}); got {min(budgets)}")
        return self

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

    @field_validator("server_cmd")
    @classmethod
    def _runnable_template(cls, v: str | None) -> str | None:
        if v is not None:
            try:  # quoting, placeholders and {port}, before anything is written
                check_server_cmd(v)
            except ServerCmdError as exc:
                raise ValueError(str(exc)) from None
        return v

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

    @model_validator(mode="after")
    def _ray_runs_one_local_engine_per_worker(self) -> SweepSpec:
        if self.executor != "ray":
            if self.ray_address is not None:
                raise ValueError("--ray-address needs --executor ray")
            return self
        if self.is_bare_target:
            raise ValueError("--executor ray runs an engine on each Ray worker; a running --target "
                             "is driven from here: drop --executor ray (or let each worker start "
                             "its own server with --engine or --server-cmd)")
        if self.search is not None:
            raise ValueError("a capacity search runs one probe after another: use the local executor")
        if max(self.replicas) > 1:
            raise ValueError("--executor ray runs one engine per worker (one GPU each); measure "
                             "replicas with the local executor, or drop --replicas")
        return self

    @model_validator(mode="after")
    def _routers_need_replicas(self) -> SweepSpec:
        if self.routers is not None and max(self.replicas) == 1:
            raise ValueError("routers route between replicas: add a replica count >= 2 "
                             "(e.g. --replicas 1,2) or drop the routers")
        if max(self.replicas) > 1 and self.is_external:
            raise ValueError("replicas start local engine replicas; an external target scales itself")
        return self

    @model_validator(mode="after")
    def _one_load_mode(self) -> SweepSpec:
        if self.search is not None:  # with server_cmd: one server per config, searched in turn
            if self.loads:
                raise ValueError("a capacity search chooses the loads itself: give no "
                                 "concurrency, rate or speedup list, only search.load")
            return self
        if sum(x is not None for x in (self.concurrency, self.rate, self.speedup)) != 1:
            raise ValueError("give exactly one of concurrency (closed loop), rate (open loop) "
                             "or speedup (trace replay)")
        return self

    @property
    def loads(self) -> list:
        """The load axis: concurrencies, rates or speed-ups."""
        return self.concurrency or self.rate or self.speedup or []

    @model_validator(mode="after")
    def _server_knobs_need_a_command(self) -> SweepSpec:
        server_knobs = (len(self.policies) * len(self.batch_sizes) * len(self.max_wait_ms)
                        * len(self.max_num_batched_tokens))
        if self.target is not None and self.server_cmd is None and server_knobs > 1:
            raise ValueError("an external target batches by its own settings: sweep the knobs "
                             "with a --server-cmd template or an --engine preset")
        if self.target is not None and not self.target.startswith(("http://", "https://")):
            raise ValueError(f"target {self.target!r} is not an http(s) URL")
        return self

    @model_validator(mode="after")
    def _engine_sets_what_it_has(self) -> SweepSpec:
        if self.engine is None:
            return self
        if self.server_cmd is not None or self.target is not None:
            raise ValueError("engine starts its own server per config: drop server_cmd and target")
        lacks = lacking_knobs(self.engine, list(self.policies), list(self.max_wait_ms),
                              list(self.prefix_caching))
        if lacks:
            raise ValueError(f"{self.engine} has no setting for {'; '.join(lacks)}")
        return self

    @model_validator(mode="after")
    def _server_settings_need_a_server(self) -> SweepSpec:
        check_launch(self.engine, self.starts_servers, self.engine_args, self.engine_env,
                     self.engine_python, self.server_cpus)
        if self.calibrate and not self.starts_servers:
            raise ValueError("calibrate: probes a server tradeoff starts (--engine or --server-cmd); "
                             "tradeoff's own engine is fitted to its steps without it")
        return self

    @property
    def is_external(self) -> bool:
        return self.target is not None or self.server_cmd is not None or self.engine is not None

    @property
    def is_bare_target(self) -> bool:
        """A --target URL that no --server-cmd starts: the server batches by its own settings and
        the trials' knobs are the SERVER_OWN_KNOBS placeholders, not settings."""
        return self.target is not None and not self.starts_servers

    @property
    def starts_servers(self) -> bool:
        """A server per server config: a --server-cmd template or an --engine preset."""
        return self.server_cmd is not None or self.engine is not None

    @property
    def scales(self) -> list[tuple[int, str | None]]:
        """(replicas, router) pairs: one replica needs no router; more get each router."""
        routers = self.routers or [DEFAULT_ROUTER]
        return [(n, None) if n == 1 else (n, r) for n in self.replicas
                for r in ([None] if n == 1 else routers)]

    @property
    def uses_replica_processes(self) -> bool:
        """Any replica count > 1 runs every trial (N = 1 too) as replica processes, one footing."""
        return max(self.replicas) > 1

    def requests_for(self, config: TrialConfig) -> int:
        """Measured requests of one trial: `requests`, or for a search's open-loop trial enough
        for its arrivals to span `search.min_span_s`."""
        if self.search is None or config.rate is None or config.speedup is not None:
            return self.requests
        return max(self.requests, math.ceil(config.rate * self.search.min_span_s))

    @property
    def num_trials(self) -> int:
        if self.search is not None:  # a guess for progress bars: a search stops at its answer
            return len(self.knob_configs()) * (self.search.max_probes or TYPICAL_PROBES)
        return len(self._points()) * self.repetitions

    def _points(self) -> list[tuple]:
        """Grid points as ((index, value), ...) per axis; budgets pair with continuous only."""
        points = itertools.product(*(list(enumerate(axis)) for axis in self._axes()))
        return [p for p in points if p[0][1] == "continuous" or p[5][1] is None]

    def _axes(self) -> list[list]:
        return [self.policies, self.batch_sizes, self.max_wait_ms, self.loads, self.scales,
                self.max_num_batched_tokens, list(dict.fromkeys(self.prefix_caching))]

    def trial_configs(self) -> list[TrialConfig]:
        """All trials, coarse first: grid corners before midpoints, repetition 0 before 1."""
        axes = self._axes()
        points = self._points()
        points.sort(key=lambda p: max(_coarseness(i, len(axis))
                                      for (i, _), axis in zip(p, axes, strict=True)))
        configs = [self._config(p, rep) for rep in range(self.repetitions) for p in points]
        if self.starts_servers:  # one server start per server config, in coarse order
            first = {}
            for i, c in enumerate(configs):
                first.setdefault(server_key(c), i)
            configs.sort(key=lambda c: first[server_key(c)])
        if len(self.replicas) > 1:  # one replica set per count: each count's trials together
            order = {n: i for i, n in enumerate(dict.fromkeys(c.replicas for c in configs))}
            configs.sort(key=lambda c: order[c.replicas])
        return configs

    def knob_configs(self) -> list[TrialConfig]:
        """Every server config of the grid without a load level (what a search sweeps)."""
        grid = self.model_copy(update={"search": None, "concurrency": [1], "rate": None, "speedup": None,
                                       "repetitions": 1})
        return [replace(c, concurrency=None) for c in grid.trial_configs()]

    def _config(self, point: tuple, repetition: int) -> TrialConfig:
        (_, policy), (_, batch), (_, wait), (_, load), (_, (replicas, router)), (_, budget), \
            (_, cache) = point
        knobs = {"repetition": repetition, "replicas": replicas, "router": router,
                 "max_num_batched_tokens": budget, "prefix_caching": cache}
        if self.speedup is not None:
            return TrialConfig(policy, batch, wait, speedup=load, **knobs)
        closed = self.concurrency is not None
        return TrialConfig(policy, batch, wait, concurrency=load if closed else None,
                           rate=None if closed else load,
                           burstiness=1.0 if closed else self.burstiness, **knobs)


def server_key(config: TrialConfig) -> tuple[str, int, float, int | None, bool | None]:
    """The knobs a server is started with (load levels run against one server)."""
    return (config.policy, config.batch_size, config.max_wait_ms, config.max_num_batched_tokens,
            config.prefix_caching)


def _coarseness(index: int, size: int) -> int:
    """0 for the ends of an axis, then 1 for its middle, 2 for quarter points, ...: the depth at
    which a binary subdivision of the axis first reaches `index`."""
    if index in (0, size - 1):
        return 0
    lo, hi, depth = 0, size - 1, 1
    while True:
        mid = (lo + hi) // 2
        if index == mid:
            return depth
        lo, hi = (lo, mid) if index < mid else (mid, hi)
        depth += 1


def parse_spec(data: dict) -> SweepSpec:
    """Validate a spec from any front end; the error names the first bad field."""
    data = _server_own_knobs(data)
    try:
        return SweepSpec(**data)
    except ValidationError as exc:
        raise grid_error(exc, SweepSpec.model_fields) from None


def _server_own_knobs(data: dict) -> dict:
    """A new spec for a bare target gets the placeholder knobs; knobs given for it are refused,
    since the server would batch by its own settings whatever the labels said. (Stored specs are
    not parsed here, so sweeps stored with knob labels still load.)"""
    if not data.get("target") or data.get("server_cmd") or data.get("engine"):
        return data
    given = [flag for key, flag in _KNOB_FLAGS.items() if data.get(key) is not None]
    if given:
        one = len(given) == 1
        raise GridError(f"{'/'.join(given)} describe{'s' * one} the server's own batching, which "
                        f"tradeoff does not control for --target URL; drop {'it' if one else 'them'}, "
                        "or start the server per config with --server-cmd or --engine")
    return {**data, **SERVER_OWN_KNOBS}
