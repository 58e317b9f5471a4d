"""The servers a sweep starts (`--engine` or `--server-cmd`): one per server config, each start
timed, its output kept in a log file of its own that the config's trials link to, and a server
that dies mid-trial noticed, so that trial fails with the reason and the next config restarts it.

What a trial records of its server (`launch_facts`): the engine's name and version, the exact
command that ran, how long it took to start, and its log.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from common.records import TrialConfig
from db.store import Store
from engine.simulate import CostModel
from experiments.predict.simulate import stored_calibration
from experiments.spec.grid import SweepSpec
from experiments.spec.sections import flat_keys
from experiments.targets.engine_logs import root_cause
from experiments.targets.engines import preset, start_prior_s
from experiments.targets.external import ServerProcess
from experiments.targets.http_target import wait_for_health

SETTLE_S = 5.0
LOG_DIR_ENV = "TRADEOFF_LOG_DIR"
DEFAULT_LOG_DIR = "tradeoff-logs"


def log_root(sqlite_path: str | None) -> Path:
    """Where server logs go: $TRADEOFF_LOG_DIR, else `tradeoff-logs/` beside a SQLite store,
    else in the working directory."""
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV])
    if sqlite_path:
        return Path(sqlite_path).resolve().parent / DEFAULT_LOG_DIR
    return Path(DEFAULT_LOG_DIR).resolve()


class SweepServers:
    """Makes each server config's ServerProcess for one sweep and remembers the one running."""

    def __init__(self, spec: SweepSpec, sweep_id: int, logs: Path) -> None:
        self.spec = spec
        self.dir = logs / f"sweep-{sweep_id}"
        self.current: ServerProcess | None = None
        self.version: str | None = None
        self.owned_by: str | None = None  # what a --server-cmd server says it is (/v1/models)
        self.failures: list[str] = []  # one line per failed start, for the command's exit
        self.start_times: list[float] = []  # seconds each start this run took to answer
        self.broken = False  # alive but not answering /health after a trial
        self.client_cpus: list[int] | None = None  # where the client runs (--server-cpus)

    @property
    def name(self) -> str:
        return self.spec.target.engine or "--server-cmd"

    def process(self, config: TrialConfig) -> ServerProcess:
        """A (not yet started) server for `config`, logging to a new file of its own."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", config.server_label)
        log = self.dir / f"{stamp}-{slug}-{os.getpid()}.log"
        argv_for = None
        target = self.spec.target
        if target.engine is not None:
            engine = preset(target.engine)
            engine.check_available(target.engine_python)  # a resumed sweep may run elsewhere
            model, python, args = target.model, target.engine_python, target.engine_args

            def argv_for(port: int) -> list[str]:
                return engine.command(model, config, port, python, args)
        self.current = ServerProcess(target.server_cmd, config, target.server_timeout_s,
                                     argv_for=argv_for, env=target.engine_env, log_path=log,
                                     label=f"{self.name} server for {config.server_label}",
                                     cpus=target.server_cpus)
        self.version, self.owned_by, self.broken = None, None, False
        return self.current

    def pin_client(self) -> list[int] | None:
        """With `server_cpus`, move this process (and so the client workers it starts) to the
        other CPUs it may use, so the load generator never waits for the server's threads; the
        CPUs it now runs on, or None (no server CPUs, or none left over)."""
        if not self.spec.target.server_cpus:
            return None
        rest = os.sched_getaffinity(0) - set(self.spec.target.server_cpus)
        if not rest:
            return None
        os.sched_setaffinity(0, rest)
        self.client_cpus = sorted(rest)
        return self.client_cpus

    def started(self, version: str | None, owned_by: str | None = None) -> None:
        """The running server answered; what it says of itself (GET /version, /v1/models)."""
        self.version, self.owned_by = version, owned_by
        if self.current is not None and self.current.start_s is not None:
            self.start_times.append(self.current.start_s)

    def mean_start_s(self) -> float:
        """Seconds a start took on average this run (the engine's prior before the first)."""
        if not self.start_times:
            return start_prior_s(self.spec.target.engine, self.spec.target.engine_args)
        return sum(self.start_times) / len(self.start_times)

    def died(self) -> bool:
        """Whether the server started last is no longer running (or stopped answering)."""
        server = self.current
        return server is not None and server.proc is not None and (self.broken or not server.is_alive())

    def check_after_trial(self, had_failures: bool) -> bool:
        """Whether the server died during a trial. After failed requests it may still be on its
        way down (vLLM's API server exits a moment after its engine core): give it SETTLE_S to
        exit or answer /health; one that does neither is treated as dead and restarted."""
        if self.died() or not had_failures or self.current is None:
            return self.died()
        try:
            wait_for_health(self.current.base_url, SETTLE_S, is_alive=self.current.is_alive)
        except (TimeoutError, RuntimeError):
            self.broken = True
        return self.died()

    def death_note(self, completed: int | None = None, total: int | None = None) -> str:
        """Why a trial failed when its server exited under it, in one line."""
        server = self.current
        assert server is not None
        cause = root_cause(server.log_text())
        counts = "" if completed is None else f" ({completed} of {total} requests completed)"
        how = f"exited with code {server.exit_code}" if server.exit_code is not None else \
            "stopped answering /health"
        return "; ".join(p for p in (
            f"the {self.name} server {how} during the trial{counts}",
            cause, f"log: {server.log_path}") if p)

    def launch_facts(self) -> dict:
        """What a trial records of the server it ran on (details.provenance)."""
        server = self.current
        if server is None:
            return {}
        name = self.spec.target.engine or self.owned_by  # a --server-cmd server: what it says it is
        return {"engine": {"name": name, "version": self.version, "command": server.command},
                "server_start_s": None if server.start_s is None else round(server.start_s, 3),
                "server_log": str(server.log_path),
                **({"client_cpus": self.client_cpus} if self.client_cpus else {})}


def recorded_starts(store: Store, spec: SweepSpec, max_sweeps: int = 5) -> list[float]:
    """Server start times measured by the latest earlier sweeps that started the same server
    (same engine or template, same model), one per start (a start's trials share it)."""
    starts: dict[str, float] = {}
    for sweep in _same_server(store, spec)[:max_sweeps]:
        for trial in store.list_trials(sweep.id):
            where = trial.details.provenance
            if where is not None and where.server_start_s is not None:
                starts[str(where.server_log)] = float(where.server_start_s)
    return list(starts.values())


def recorded_calibration(store: Store, spec: SweepSpec) -> CostModel | None:
    """The step costs the latest earlier sweep of the same server calibrated (its probes, stored
    with its first trial), for estimates before anything runs; None when none calibrated."""
    for sweep in _same_server(store, spec):
        cost = stored_calibration(t.details for t in store.list_trials(sweep.id))
        if cost is not None:
            return cost
    return None


def _same_server(store: Store, spec: SweepSpec) -> list:
    """Earlier sweeps that started the same server (engine or template, model, extra arguments:
    e.g. --enforce-eager halves a vLLM start), newest first."""
    t = spec.target
    server = (t.engine, t.server_cmd, t.model, list(t.engine_args))
    stored = [(s, flat_keys(s.grid)) for s in store.list_sweeps()]  # no parse: any stored grid
    return [s for s, grid in stored
            if (grid.get("engine"), grid.get("server_cmd"), s.model,
                list(grid.get("engine_args") or ())) == server]
