"""Where trials run when this process drives the target: the placements of the runner loop.

`LocalEngine` (the sweep's model loaded here, one engine), `Replicas` (a replica set per replica
count), `StartedServers` (an engine's or a `--server-cmd` server per server config) and
`RemoteTarget` (a running `--target` URL). They share `InProcess`: how a batch runs on a target
(experiments/run/interfaces.py, `Strategy.passes`), the target kept up between batches,
warm-up, the unloaded baseline (once per sweep, on the first target) and drift checks at each
target's start and end. Each opens its own kind of target (`open`). Ray's workers are the other
placement (ray_executor.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any

from common.records import SLO, TrialConfig
from engine.config import EngineConfig
from experiments.run.interfaces import Placement, Ran, Runner
from experiments.run.trial import measure_baseline, run_trial
from experiments.spec.grid import SweepSpec, server_key
from experiments.spec.profiles import needs_baseline, resolve_slos
from experiments.targets.external import ExternalTarget, TargetSetupError, api_key_from_env, load_tokenizer

if TYPE_CHECKING:  # the engine (torch) loads only when a sweep runs, not when the UI queues one
    from experiments.targets.local import LocalTarget
    from experiments.targets.protocol import Target
    from experiments.targets.replica_target import ReplicaTarget


class InProcess:
    """Trials run from this process on one target at a time, each stored by the runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.stack = contextlib.ExitStack()  # the target kept up between batches
        self.key: Hashable = None
        self.target_now: Target | None = None
        self.slos_now: list[SLO] = []
        self.baseline: dict[str, float] | None = None

    def open(self, config: TrialConfig) -> contextlib.AbstractContextManager[Target]:
        """A started target for `config`, checked, warmed up; closed (and stopped) on exit."""
        raise NotImplementedError

    def target_key(self, config: TrialConfig) -> Hashable:
        """Which kept target `config` can run on (a search's targets; a pass opens its own)."""
        return None

    def groups(self, configs: list[TrialConfig]) -> list[list[TrialConfig]]:
        return [configs]

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        self.runner.report(None)
        try:
            yield
        finally:
            self.stack.close()  # the kept target, if any: its end check, then closed (stopped)

    def run(self, batch: list[TrialConfig], passes: bool) -> list[Ran] | None:
        return self.run_pass(list(batch)) if passes else self.run_each(batch)

    def run_pass(self, pending: list[TrialConfig]) -> list[Ran] | None:
        """One target's trials, back to back; None once cancelled. A server that fails to start
        fails its configs' trials (with its one-line reason) and the sweep goes on; one that
        dies mid-trial fails that trial and is restarted for the rest."""
        runner, ran = self.runner, []
        while pending:
            try:
                with self.open(pending[0]) as target:
                    slos = self.slos(target)
                    while pending and not runner.servers.died():
                        if runner.should_stop():
                            return None
                        config = pending.pop(0)
                        runner.run_one(target, config, slos)
                        ran.append(Ran(config, measured=True))
            except TargetSetupError as exc:
                if not runner.spec.starts_servers:
                    raise
                ran += [Ran(c, measured=False) for c in pending]
                runner.fail_start(pending, str(exc))  # clears `pending`
                return ran
        return ran

    def run_each(self, batch: list[TrialConfig]) -> list[Ran]:
        """Each config on the kept target (`target`), as the strategy chose it."""
        ran = []
        for config in batch:
            try:
                target, slos = self.target(config)
            except TargetSetupError as exc:
                if not self.runner.spec.starts_servers:
                    raise
                self.runner.fail_start([config], str(exc))  # this config ends here; others go on
                ran.append(Ran(config, measured=False))
                continue
            self.runner.run_one(target, config, slos)
            ran.append(Ran(config, measured=True))
        return ran

    def target(self, config: TrialConfig) -> tuple[Target, list[SLO]]:
        """(target, resolved SLOs) for `config`: the kept one, or a new one started when none
        is up, `config` needs another (another server config's server: the previous one is
        stopped first) or the server died. Kept until the session ends."""
        key = self.target_key(config)
        if self.target_now is None or key != self.key or self.runner.servers.died():
            self.stack.close()  # stops the previous config's server (its whole process group)
            self.target_now = None
            self.target_now = self.stack.enter_context(self.open(config))
            self.key, self.slos_now = key, self.slos(self.target_now)
        return self.target_now, self.slos_now

    def slos(self, target: Target) -> list[SLO]:
        """The profile's SLOs; relative ones against the unloaded baseline, measured once per
        sweep, on its first target."""
        runner = self.runner
        if self.baseline is None and needs_baseline(runner.profile):
            self.baseline = measure_baseline(target.engine, runner.profile, seed=runner.spec.load.seed,
                                             **target.request_kwargs())
        return resolve_slos(runner.profile, self.baseline)

    def warm_up(self, target: Target) -> None:
        """One short trial so first-call costs (allocator, kernels) stay out of the first trial."""
        n, spec = target.num_replicas(), self.runner.spec
        config = TrialConfig("continuous", max(spec.knobs.batch_sizes), 0.0, concurrency=2 * n,
                             replicas=n, router=None if n == 1 else "round_robin")
        run_trial(target.engine, config, self.runner.profile, 4 * n, seed=spec.load.seed, slos=[],
                  **target.request_kwargs())

    def checked(self, target: Target) -> Iterator[Target]:
        """Yield `target` between speed checks (drift control): one now, one at its end."""
        speed = self.runner.speed
        if speed is not None:
            speed.measure(target)
        yield target
        if speed is not None:
            speed.at_end(target)


class LocalEngine(InProcess):
    """The sweep's model loaded in this process (the one the CLI loaded first, if any)."""

    def target_key(self, config: TrialConfig) -> Hashable:
        # A search over replica counts (the Run page offers one) needs a target per count: keyed
        # by nothing, every config ran on the first target's count.
        return config.replicas

    @contextlib.contextmanager
    def open(self, config: TrialConfig) -> Iterator[Target]:
        runner = self.runner
        target = runner.take_target()
        if target is None or target.num_replicas() != config.replicas:
            if target is not None:
                target.close()
            target = local_target_for(runner.spec, config.replicas)
        runner.store.set_sweep_device(runner.sweep_id, str(target.loaded.device),
                                      target.loaded.device_name, str(target.loaded.dtype))
        self.warm_up(target)
        with contextlib.closing(target):
            yield from self.checked(target)


class Replicas(LocalEngine):
    """A replica set per replica count (every trial, N = 1 too, as replica processes)."""

    def groups(self, configs: list[TrialConfig]) -> list[list[TrialConfig]]:
        by_count: dict[int, list[TrialConfig]] = {}
        for config in configs:
            by_count.setdefault(config.replicas, []).append(config)
        return list(by_count.values())


class RemoteTarget(InProcess):
    """A running OpenAI-compatible server (`--target URL`), measured as it is configured."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self.tok: Any = None

    def tokenizer(self) -> Any:
        """The tokenizer prompts are built with, loaded once per sweep."""
        if self.tok is None:
            target = self.runner.spec.target
            self.tok = load_tokenizer(target.tokenizer or target.target_model or target.model)
        return self.tok

    def connect(self, url: str) -> ExternalTarget:
        target = self.runner.spec.target
        return ExternalTarget.connect(url, target.target_model, self.tokenizer(),
                                      api_key_from_env(target.api_key_env))

    @contextlib.contextmanager
    def open(self, config: TrialConfig) -> Iterator[Target]:
        with contextlib.closing(self.connect(self.runner.spec.target.url)) as target:
            self.warm_up(target)
            yield from self.checked(target)


class StartedServers(RemoteTarget):
    """A server per server config, started by the sweep from an `--engine` preset or a
    `--server-cmd` template (experiments/targets/servers.py); calibrated once per sweep when
    asked (black-box probes of the first, experiments/predict/calibrate.py)."""

    def target_key(self, config: TrialConfig) -> Hashable:
        return server_key(config)

    def groups(self, configs: list[TrialConfig]) -> list[list[TrialConfig]]:
        return server_groups(configs)

    @contextlib.contextmanager
    def open(self, config: TrialConfig) -> Iterator[Target]:
        runner = self.runner
        with runner.servers.process(config) as server, \
                contextlib.closing(self.connect(server.base_url)) as target:
            info = target.engine.describe()
            runner.servers.started(info.version, info.owned_by)
            self.warm_up(target)
            if runner.spec.execution.calibrate and runner.calibration is None:
                runner.fitted_cost()  # a resumed sweep: the calibration its first trial stored
                if runner.calibration is None:  # else probe the first server, once per sweep
                    runner.probe_server(target, config.batch_size)
            yield from self.checked(target)


def server_groups(configs: list[TrialConfig]) -> list[list[TrialConfig]]:
    """`configs` per server config (one server start each), in their order of first appearance."""
    groups: dict[tuple, list[TrialConfig]] = {}
    for config in configs:
        groups.setdefault(server_key(config), []).append(config)
    return list(groups.values())


def placement_for(runner: Runner) -> Placement:
    """Where a sweep's trials run when this process drives them (the spec says which)."""
    spec = runner.spec
    if spec.starts_servers:
        return StartedServers(runner)
    if spec.is_external:
        return RemoteTarget(runner)
    if spec.uses_replica_processes:
        return Replicas(runner)
    return LocalEngine(runner)


def local_target_for(spec: SweepSpec, replicas: int = 1) -> LocalTarget | ReplicaTarget:
    """Load the sweep's model once and start its engine (or `replicas` replica processes)."""
    target = spec.target
    config = EngineConfig(model=target.model, device=target.device, dtype=target.dtype,
                          kv_budget_tokens=target.kv_budget_tokens, seed=spec.load.seed)
    if spec.uses_replica_processes:
        from experiments.targets.replica_target import ReplicaTarget

        return ReplicaTarget.start(config, replicas, None)
    from experiments.targets.local import LocalTarget

    return LocalTarget.start(config)
