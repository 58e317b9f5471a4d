"""The sweep grid: a validated spec (CLI flags, `--config sweep.yaml`, the Run page) and the
ordered list of trials it expands to."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.records import TrialConfig
from common.vocab import DEFAULT_ROUTER
from experiments.spec.grid_errors import GridError, grid_error
from experiments.spec.sections import (
    FLAT_FIELDS,
    ExecutionSpec,
    KnobsSpec,
    LoadSpec,
    SearchSpec,
    TargetSpec,
    first_reported,
    flat_keys,
    flat_name,
    nest,
)
from experiments.targets.engines import check_launch, lacking_knobs

# A bare --target (no --server-cmd or --engine) batches by its own settings, which tradeoff
# neither sets nor knows. Its trials still need knob values (TrialConfig and the trials table have
# no "unknown"), so they record these placeholders, and readers that know the sweep is a bare
# target (SweepSpec.is_bare_target; its device `server at URL`) never show them as settings.
SERVER_OWN_KNOBS: dict[str, list] = {"policies": ["continuous"], "batch_sizes": [1], "max_wait_ms": [0.0]}
_KNOB_FLAGS = {"policies": "--policy", "batch_sizes": "--batch-sizes", "max_wait_ms": "--max-wait-ms",
               "max_num_batched_tokens": "--max-num-batched-tokens", "prefix_caching": "--prefix-caching"}


TYPICAL_PROBES = 12  # trials one config's search takes on the built-in engine, bracket and bisect


class SweepSpec(BaseModel):
    """Everything that defines a sweep, in sections (sections.py); stored as the sweep's grid
    so it can be resumed. Flat input (every field at the top, as stored before sections) is
    accepted and nested on the way in."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # In the order the flat fields mostly ran, so the first of several errors stays the same.
    target: TargetSpec = Field(default_factory=TargetSpec)
    knobs: KnobsSpec = Field(default_factory=KnobsSpec)
    load: LoadSpec = Field(default_factory=LoadSpec)
    # The sweep's label: it names the sweep, not what runs or how, so it is in no section.
    name: str | None = Field(default=None, max_length=200)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    search: SearchSpec | None = None  # set: search each config's capacity instead of a load grid

    @model_validator(mode="before")
    @classmethod
    def _into_sections(cls, data: Any) -> Any:
        return nest(data) if isinstance(data, dict) else data

    # Checks across fields run here, not on a section, so their errors stay located at the
    # spec ("sweep: ..."), as users have always read them.
    @model_validator(mode="after")
    def _budgets_fit_the_grid(self) -> SweepSpec:
        knobs = self.knobs
        budgets = [b for b in knobs.max_num_batched_tokens if b is not None]
        if not budgets:
            return self
        if "continuous" not in knobs.policies:
            raise ValueError("max_num_batched_tokens needs the continuous policy; add it to policies")
        if min(budgets) < max(knobs.batch_sizes):  # as vLLM: each running row decodes one token
            raise ValueError(f"every max_num_batched_tokens must be >= the largest batch size "
                             f"({max(knobs.batch_sizes)}); got {min(budgets)}")
        return self

    @model_validator(mode="after")
    def _ray_runs_one_local_engine_per_worker(self) -> SweepSpec:
        if self.execution.executor != "ray":
            if self.execution.ray_address is not None:
                raise ValueError("--ray-address needs --executor ray")
            return self
        if self.is_bare_target:
            raise ValueError("--executor ray runs an engine on each Ray worker; a running --target "
                             "is driven from here: drop --executor ray (or let each worker start "
                             "its own server with --engine or --server-cmd)")
        if self.search is not None:
            raise ValueError("a capacity search runs one probe after another: use the local executor")
        if max(self.knobs.replicas) > 1:
            raise ValueError("--executor ray runs one engine per worker (one GPU each); measure "
                             "replicas with the local executor, or drop --replicas")
        return self

    @model_validator(mode="after")
    def _routers_need_replicas(self) -> SweepSpec:
        if self.knobs.routers is not None and max(self.knobs.replicas) == 1:
            raise ValueError("routers route between replicas: add a replica count >= 2 "
                             "(e.g. --replicas 1,2) or drop the routers")
        if max(self.knobs.replicas) > 1 and self.is_external:
            raise ValueError("replicas start local engine replicas; an external target scales itself")
        return self

    @model_validator(mode="after")
    def _one_load_mode(self) -> SweepSpec:
        load = self.load
        if self.search is not None:  # with server_cmd: one server per config, searched in turn
            if self.loads:
                raise ValueError("a capacity search chooses the loads itself: give no "
                                 "concurrency, rate or speedup list, only search.load")
            return self
        if sum(x is not None for x in (load.concurrency, load.rate, load.speedup)) != 1:
            raise ValueError("give exactly one of concurrency (closed loop), rate (open loop) "
                             "or speedup (trace replay)")
        return self

    @property
    def loads(self) -> list:
        """The load axis: concurrencies, rates or speed-ups."""
        return self.load.concurrency or self.load.rate or self.load.speedup or []

    @model_validator(mode="after")
    def _server_knobs_need_a_command(self) -> SweepSpec:
        knobs, url = self.knobs, self.target.url
        server_knobs = (len(knobs.policies) * len(knobs.batch_sizes) * len(knobs.max_wait_ms)
                        * len(knobs.max_num_batched_tokens))
        if url is not None and self.target.server_cmd is None and server_knobs > 1:
            raise ValueError("an external target batches by its own settings: sweep the knobs "
                             "with a --server-cmd template or an --engine preset")
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"target {url!r} is not an http(s) URL")
        return self

    @model_validator(mode="after")
    def _engine_sets_what_it_has(self) -> SweepSpec:
        target, knobs = self.target, self.knobs
        if target.engine is None:
            return self
        if target.server_cmd is not None or target.url is not None:
            raise ValueError("engine starts its own server per config: drop server_cmd and target")
        lacks = lacking_knobs(target.engine, list(knobs.policies), list(knobs.max_wait_ms),
                              list(knobs.prefix_caching))
        if lacks:
            raise ValueError(f"{target.engine} has no setting for {'; '.join(lacks)}")
        return self

    @model_validator(mode="after")
    def _server_settings_need_a_server(self) -> SweepSpec:
        target = self.target
        check_launch(target.engine, self.starts_servers, target.engine_args, target.engine_env,
                     target.engine_python, target.server_cpus)
        if self.execution.calibrate and not self.starts_servers:
            raise ValueError("calibrate: probes a server tradeoff starts (--engine or --server-cmd); "
                             "tradeoff's own engine is fitted to its steps without it")
        return self

    def copy_with(self, **changes: Any) -> SweepSpec:
        """A copy with fields replaced, named by their flat keys (`rate=`, `search=`), each into
        its section. Not validated, as `model_copy` is not: callers derive specs (a search's
        knobs as a grid, one policy's slice) that need not pass the checks a user's spec does."""
        update: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if key in FLAT_FIELDS:
                section, field = FLAT_FIELDS[key]
                sections.setdefault(section, {})[field] = value
            elif key in type(self).model_fields:
                update[key] = value
            else:
                raise KeyError(f"SweepSpec has no field {key!r}")
        update.update({name: getattr(self, name).model_copy(update=fields)
                       for name, fields in sections.items()})
        return self.model_copy(update=update)

    @property
    def is_external(self) -> bool:
        return self.target.url is not None or self.starts_servers

    @property
    def is_bare_target(self) -> bool:
        """A --target URL that no --server-cmd starts: the server batches by its own settings and
        the trials' knobs are the SERVER_OWN_KNOBS placeholders, not settings."""
        return self.target.url is not None and not self.starts_servers

    @property
    def starts_servers(self) -> bool:
        """A server per server config: a --server-cmd template or an --engine preset."""
        return self.target.server_cmd is not None or self.target.engine is not None

    @property
    def scales(self) -> list[tuple[int, str | None]]:
        """(replicas, router) pairs: one replica needs no router; more get each router."""
        routers = self.knobs.routers or [DEFAULT_ROUTER]
        return [(n, None) if n == 1 else (n, r) for n in self.knobs.replicas
                for r in ([None] if n == 1 else routers)]

    @property
    def uses_replica_processes(self) -> bool:
        """Any replica count > 1 runs every trial (N = 1 too) as replica processes, one footing."""
        return max(self.knobs.replicas) > 1

    def requests_for(self, config: TrialConfig) -> int:
        """Measured requests of one trial: `requests`, or for a search's open-loop trial enough
        for its arrivals to span `search.min_span_s`."""
        if self.search is None or config.rate is None or config.speedup is not None:
            return self.load.requests
        return max(self.load.requests, math.ceil(config.rate * self.search.min_span_s))

    @property
    def num_trials(self) -> int:
        if self.search is not None:  # a guess for progress bars: a search stops at its answer
            return len(self.knob_configs()) * (self.search.max_probes or TYPICAL_PROBES)
        return len(self._points()) * self.load.repetitions

    def _points(self) -> list[tuple]:
        """Grid points as ((index, value), ...) per axis; budgets pair with continuous only."""
        points = itertools.product(*(list(enumerate(axis)) for axis in self._axes()))
        return [p for p in points if p[0][1] == "continuous" or p[5][1] is None]

    def _axes(self) -> list[list]:
        k = self.knobs
        return [k.policies, k.batch_sizes, k.max_wait_ms, self.loads, self.scales,
                k.max_num_batched_tokens, list(dict.fromkeys(k.prefix_caching))]

    def trial_configs(self) -> list[TrialConfig]:
        """All trials, coarse first: grid corners before midpoints, repetition 0 before 1."""
        axes = self._axes()
        points = self._points()
        points.sort(key=lambda p: max(_coarseness(i, len(axis))
                                      for (i, _), axis in zip(p, axes, strict=True)))
        configs = [self._config(p, rep) for rep in range(self.load.repetitions) for p in points]
        if self.starts_servers:  # one server start per server config, in coarse order
            first = {}
            for i, c in enumerate(configs):
                first.setdefault(server_key(c), i)
            configs.sort(key=lambda c: first[server_key(c)])
        if len(self.knobs.replicas) > 1:  # one replica set per count: each count's trials together
            order = {n: i for i, n in enumerate(dict.fromkeys(c.replicas for c in configs))}
            configs.sort(key=lambda c: order[c.replicas])
        return configs

    def knob_configs(self) -> list[TrialConfig]:
        """Every server config of the grid without a load level (what a search sweeps)."""
        grid = self.copy_with(search=None, concurrency=[1], rate=None, speedup=None, repetitions=1)
        return [replace(c, concurrency=None) for c in grid.trial_configs()]

    def _config(self, point: tuple, repetition: int) -> TrialConfig:
        (_, policy), (_, batch), (_, wait), (_, load), (_, (replicas, router)), (_, budget), \
            (_, cache) = point
        knobs = {"repetition": repetition, "replicas": replicas, "router": router,
                 "max_num_batched_tokens": budget, "prefix_caching": cache}
        if self.load.speedup is not None:
            return TrialConfig(policy, batch, wait, speedup=load, **knobs)
        closed = self.load.concurrency is not None
        return TrialConfig(policy, batch, wait, concurrency=load if closed else None,
                           rate=None if closed else load,
                           burstiness=1.0 if closed else self.load.burstiness, **knobs)


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
    """Validate a spec from any front end, flat or in sections; the error names the first bad
    field by its flat key (`batch_sizes`, not `knobs.batch_sizes`), as it always did."""
    data = _server_own_knobs(flat_keys(data))
    try:
        return SweepSpec(**data)
    except ValidationError as exc:
        errors = exc.errors()
        locs = [flat_name(e["loc"]) for e in errors]
        i = first_reported(locs)  # of several, the one the flat spec reported first
        raise grid_error(locs[i], errors[i]["msg"], FLAT_FIELDS) from None


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
