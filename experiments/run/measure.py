"""One trial measured on a target, judged as a result or a failure with its reason: the step the
local sweep runner and a Ray worker that owns a server both take (composition, not inheritance).

A trial fails, rather than stands as a measurement, when it raised, when the server it ran on
died under it (experiments/targets/servers.py), or when no request completed. A trial cancelled
mid-way is neither: a partial trial is not a result.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, replace

from common.details import Provenance
from common.records import SLO, RequestRecord, TrialConfig, TrialMetrics
from experiments.analysis.metrics import window
from experiments.load.loadgen import StopCheck
from experiments.run.trial import TrialResult, run_trial
from experiments.spec.profiles import Profile
from experiments.targets.engines import preset
from experiments.targets.http_target import server_root
from experiments.targets.protocol import Target
from experiments.targets.server_metrics import MetricsScraper, with_server_metrics
from experiments.targets.servers import SweepServers


@dataclass(frozen=True)
class Outcome:
    """What one trial came to: a result (with its metrics as stored), a failure, or stopped."""

    result: TrialResult | None = None
    metrics: TrialMetrics | None = None
    error: str | None = None

    @property
    def records(self) -> list[RequestRecord]:
        return [] if self.result is None else self.result.records


def measure(target: Target, config: TrialConfig, profile: Profile, num_requests: int, *, seed: int,
            slos: list[SLO], servers: SweepServers, engine: str | None,
            max_duration_s: float | None = None, should_stop: StopCheck | None = None) -> Outcome:
    """Run `config` on `target` (a local engine or a server), with the engine's /metrics
    scraped when it is a started `engine` preset; see the module doc for what fails."""
    try:
        with scraper_for(target, engine) as scraper:
            result = run_trial(target.engine, config, profile, num_requests, seed=seed, slos=slos,
                               max_duration_s=max_duration_s, should_stop=should_stop,
                               **target.request_kwargs(), **target.memory_kwargs())
    except Exception as exc:  # the sweep goes on; the failure is stored with its reason
        return Outcome(error=servers.death_note() if servers.died() else f"{type(exc).__name__}: {exc}")
    if result.was_stopped:
        return Outcome()
    if servers.check_after_trial(result.metrics.requests_failed > 0):  # a dying server, not a config
        return Outcome(result, error=servers.death_note(result.metrics.requests_completed,
                                                        len(result.records)))
    if result.metrics.requests_completed == 0:  # e.g. every request over the KV budget
        return Outcome(result, error=next((r.error for r in result.records if r.error),
                                          "no request completed"))
    metrics = with_provenance(result.metrics, target, **servers.launch_facts())
    if scraper is not None:  # the engine's own series over the trial, next to ours
        busy = window(result.records + result.background)  # every request the counters saw
        metrics = with_server_metrics(metrics, scraper.summary(window(result.records), busy))
    return Outcome(result, metrics)


def scraper_for(target: Target, engine: str | None) -> contextlib.AbstractContextManager:
    """Scrapes a started engine's /metrics during a trial; a no-op for other targets."""
    if engine is None:
        return contextlib.nullcontext()
    preset_ = preset(engine)
    return MetricsScraper(f"{server_root(target.engine.api_base)}/metrics", preset_.gauges,
                          preset_.counters, preset_.scrape_interval_s)


def with_provenance(metrics: TrialMetrics, target: Target, **extra: object) -> TrialMetrics:
    """The trial's metrics with where it ran in details.provenance (node, device, replicas)."""
    loaded = target.loaded
    where = Provenance(node=socket.gethostname(), pid=os.getpid(), device=str(loaded.device),
                       device_name=loaded.device_name,
                       # replicas: where each ran and how requests were routed (None: one engine)
                       replicas=target.placement()).merged(extra)
    return replace(metrics, details=replace(metrics.details, provenance=where))
