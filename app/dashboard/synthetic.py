"""Synthetic sweep results written through the real Store: for the dashboard's tests, its
benchmark and screenshots, where loading a model would only cost time.

The request timelines follow a closed-form toy server (bigger batches: longer steps but more
requests per step; more users than batch slots: queueing), and their metrics come from the real
`compute_trial_metrics`, so every number the pages show is consistent with the request rows.
Closed-loop (concurrency) grids only.
"""

from __future__ import annotations

import math
from dataclasses import replace

from common.details import TimeSeries, TrialDetails
from common.records import SLO, RequestRecord, TrialConfig
from db.store import Store
from engine.core import StepRecord
from experiments.analysis.metrics import compute_trial_metrics
from experiments.analysis.timeseries import trial_timeseries
from experiments.spec.grid import SweepSpec, parse_spec
from experiments.spec.profiles import load_profile

DEFAULT_SLOS = (SLO("ttft_ms", "p90", 60.0), SLO("tpot_ms", "p90", 3.0))


def _tokens(i: int) -> tuple[int, int]:
    return 64 + (i * 13) % 64, 16 + (i * 7) % 32  # (prompt, output): varied, deterministic


def synthetic_requests(config: TrialConfig, num_requests: int) -> list[RequestRecord]:
    """A closed-loop trial's request timelines (seconds) for `config` on the toy server."""
    users = config.concurrency or 1
    running = min(config.batch_size, users)
    step_ms = (1.0 + 0.15 * running) * (1.0 + 0.02 * math.sin(config.repetition + 1))
    waves = math.ceil(users / config.batch_size) - 1
    drain = 1.0 if config.policy == "static" else 0.5  # continuous refills freed slots sooner
    free_at = [0.0] * users
    records = []
    for i in range(num_requests):
        user, (prompt, output) = i % users, _tokens(i)
        scheduled = free_at[user]
        prefill_ms, decode_ms = 0.02 * prompt * running, output * step_ms
        # Users beyond the batch wait for `waves` services ahead of them.
        queue = config.max_wait_ms + waves * drain * (prefill_ms + decode_ms)
        admitted = scheduled + 0.1 + queue
        first = admitted + prefill_ms
        done = first + decode_ms
        free_at[user] = done
        records.append(RequestRecord(i, scheduled / 1e3, (scheduled + 0.1) / 1e3, admitted / 1e3,
                                     (first / 1e3,), done / 1e3, prompt, output))
    return records


def add_synthetic_sweep(store: Store, spec: SweepSpec | dict, slos=DEFAULT_SLOS,
                        status: str = "done") -> int:
    """Store a sweep with every trial of `spec` measured on the toy server; return its id."""
    spec = spec if isinstance(spec, SweepSpec) else parse_spec(spec)
    profile = load_profile(spec.load.profile).model_dump(mode="json")
    sweep_id = store.create_sweep(
        name=spec.name or f"synthetic {spec.load.profile}", model=spec.target.model, device="cpu",
        device_name="synthetic", dtype="float32", profile=profile,
        grid=spec.model_dump(mode="json"), seed=spec.load.seed,
        provenance={"tradeoff": "synthetic"}, trials_total=spec.num_trials)
    store.start_sweep(sweep_id, pid=0)
    for config in spec.trial_configs():
        records = synthetic_requests(config, spec.load.requests)
        start, end = records[0].scheduled_s, max(r.done_s for r in records)
        steps = [StepRecord(start, end - start, "decode", min(config.batch_size,
                                                              config.concurrency or 1), 1)]
        metrics = compute_trial_metrics(records, steps, list(slos), None, False)
        series = trial_timeseries(records, [], steps, list(slos))
        metrics = replace(metrics, details=TrialDetails(timeseries=TimeSeries.from_dict(series)))
        store.add_trial(sweep_id, config, metrics, records, None, None)
    store.update_progress(sweep_id, spec.num_trials, 0, None)
    if status != "running":
        store.finish_sweep(sweep_id, status)
    return sweep_id
