"""What a trial stores beyond its metric columns (`TrialMetrics.details`, the trials table's
`details_json`): typed records, one per part, each named and shaped as its JSON key.

Writers build these records; readers use attributes (`details.prediction.plan.start`). Every
part is optional: a trial carries the parts its run produced (a trace trial its `trace`, a
started server's its `server_metrics`, a search's calibration trial its `prediction.plan`).
The to/from-dict rule (missing keys default, unknown keys kept) is common/details_base.py's;
db/migrations.py (version 5) rewrote stored rows to the shape these records write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.details_base import Record, extra_field, part
from common.details_prediction import Prediction, ProbeCalibration, Refit, Revision, SearchPlan

__all__ = ["Attainment", "ClientCheck", "Drift", "Prediction", "PrefixCache", "ProbeCalibration",
           "Provenance", "Record", "Refit", "Rerun", "Revision", "SearchPlan", "ServerMetrics",
           "SpeedCheck", "TimeSeries", "Trace", "TrialDetails", "part"]


@dataclass(frozen=True)
class TimeSeries(Record):
    """Per-window series of a trial (experiments/analysis/timeseries.py), one value a window."""

    window_s: float | None = None
    t_s: list[float] = field(default_factory=list)  # window start, s from the trial's start
    arrivals_per_s: list[float] = field(default_factory=list)
    slo_attainment: list[float | None] = field(default_factory=list)
    queue_depth: list[float | None] = field(default_factory=list)
    batch_size: list[float] = field(default_factory=list)
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class Trace(Record):
    """What a trace trial replayed: the window, the count, the scaling, and how faithfully."""

    trace: str | None = None
    speedup: float | None = None
    window_start_s: float | None = None
    window_end_s: float | None = None
    duration_s: float | None = None
    requests_in_window: int | None = None
    requests_replayed: int | None = None
    length_scale: float | None = None
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    send_lag_ms: dict[str, float] | None = None  # p50, p99, max of sent - scheduled
    attribution: str | None = None  # a built-in trace's source and licence
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class ServerMetrics(Record):
    """A server's own /metrics sampled during the trial (experiments/targets/server_metrics.py)."""

    url: str | None = None
    interval_s: float | None = None  # None: gauges read only at the trial's ends
    t_s: list[float] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)  # gauge -> samples
    stats: dict[str, dict | None] = field(default_factory=dict)  # gauge -> {mean, max} | None
    stats_samples: int | None = None
    window_t_s: list[float] | None = None  # the measurement window on t_s's clock
    busy_t_s: list[float] | None = None  # first request sent to last ended (warm-up included)
    counters: dict[str, float | None] = field(default_factory=dict)  # counter -> increase
    prefix_cache_hit_rate: float | None = None
    scrape_errors: int | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class Provenance(Record):
    """Where a trial ran: node, device, replicas' placement; a started server's engine, start
    time and log; on Ray the worker (its own keys are kept in `extra`)."""

    node: str | None = None
    pid: int | None = None
    device: str | None = None
    device_name: str | None = None
    replicas: dict | None = None  # {replicas, placements, router}: where each replica ran
    engine: dict | None = None  # {name, version, command} of a started server
    server_start_s: float | None = None
    server_log: str | None = None
    client_cpus: Any = None  # the CPUs the load client was pinned to
    executor: str | None = None  # "ray"
    worker: int | None = None
    node_ip: str | None = None
    node_id: str | None = None
    gpu_ids: list[str] | None = None
    attempt: int | None = None  # a Ray trial's try (a lost worker's trial runs again once)
    extra: dict[str, Any] = extra_field()

    OPTIONAL = frozenset({"replicas", "engine", "server_start_s", "server_log", "client_cpus",
                          "executor", "worker", "node_ip", "node_id", "gpu_ids", "attempt"})

    def merged(self, other: Provenance | Mapping[str, Any]) -> Provenance:
        """This provenance with `other`'s keys over it (e.g. a Ray worker's over a trial's)."""
        return Provenance.from_dict({**self.to_dict(), **_as_dict(other)})


@dataclass(frozen=True)
class ClientCheck(Record):
    """The load client's check of itself (experiments/load/client_stats.py); the client's own
    facts (e.g. `uvloop`) are kept in `extra`."""

    send_lag_ms: dict[str, float] | None = None  # p50, p99, max, p90
    loop_lag_ms: dict[str, float] | None = None
    limit_ms: float | None = None
    stalled_share: float | None = None
    send_lag_judged: bool | None = None
    cpu_s: float | None = None
    wall_s: float | None = None
    cpu_share: float | None = None
    num_workers: int | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class Attainment(Record):
    """What a trial's SLO attainment is worth as evidence (misses cluster in time)."""

    design_effect: float | None = None
    effective_n: float | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class PrefixCache(Record):
    """The prefix-cache hit rate's inputs over the measured requests, and why it is unknown."""

    num_cached_tokens: int | None = None
    num_prompt_tokens: int | None = None
    num_reporting: int | None = None
    num_requests: int | None = None
    reason: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class SpeedCheck(Record):
    """The machine's speed check after this trial (experiments/run/drift.py)."""

    at_s: float | None = None
    p50_ms: dict[str, float] = field(default_factory=dict)
    drift: str | None = None
    reference_p50_ms: dict[str, float] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class Drift(Record):
    """Why this trial is no evidence: the machine's speed drifted while it ran."""

    reason: str | None = None
    reference_p50_ms: dict[str, float] | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class Rerun(Record):
    """A trial measured again because its first run was flagged."""

    first_run: str | None = None
    extra: dict[str, Any] = extra_field()


@dataclass(frozen=True)
class TrialDetails(Record):
    """Everything a trial stores as JSON, each part optional (None: this run produced none)."""

    timeseries: TimeSeries | None = None
    trace: Trace | None = None
    provenance: Provenance | None = None
    client: ClientCheck | None = None
    attainment: Attainment | None = None
    server_metrics: ServerMetrics | None = None
    mean_batch_size_from: str | None = None  # where mean_batch_size came from, if not steps
    prefix_cache_hit_rate_from: str | None = None  # likewise for the hit rate
    prefix_cache: PrefixCache | None = None
    ttft_ms_by_turn: dict[str, dict[str, float]] | None = None  # turn ("1", ...) -> p50, p90, count
    prediction: Prediction | None = None
    revision: Revision | None = None
    speed_check: SpeedCheck | None = None
    drift: Drift | None = None
    rerun: Rerun | None = None
    extra: dict[str, Any] = extra_field()

    NESTED = {"timeseries": TimeSeries, "trace": Trace, "provenance": Provenance,
              "client": ClientCheck, "attainment": Attainment, "server_metrics": ServerMetrics,
              "prefix_cache": PrefixCache, "prediction": Prediction, "revision": Revision,
              "speed_check": SpeedCheck, "drift": Drift, "rerun": Rerun}
    OPTIONAL = frozenset({"timeseries", "trace", "provenance", "client", "attainment",
                          "server_metrics", "mean_batch_size_from", "prefix_cache_hit_rate_from",
                          "prefix_cache", "ttft_ms_by_turn", "prediction", "revision",
                          "speed_check", "drift", "rerun"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrialDetails:
        """Any stored version's details. One older shape is moved: searches of early December
        2026 stored their revision under the prediction (`prediction.revision`); it lives in
        `revision` since (a search over an external server has no prediction)."""
        data = dict(data or {})
        prediction = data.get("prediction")
        if isinstance(prediction, Mapping) and "revision" in prediction:
            prediction = dict(prediction)
            moved = prediction.pop("revision")
            data["prediction"] = prediction
            if isinstance(moved, Mapping) and "revision" not in data:
                data["revision"] = Revision.of(moved).to_dict()
        return super().from_dict(data)

    @classmethod
    def of(cls, details: TrialDetails | Mapping[str, Any] | None) -> TrialDetails:
        """`details` as a record (a dict from JSON or a test; None: empty)."""
        return details if isinstance(details, TrialDetails) else cls.from_dict(details)

    @property
    def drift_reason(self) -> str | None:
        """Why this trial is no evidence because the machine drifted, or None."""
        return self.drift.reason if self.drift is not None else None

    @property
    def effective_n(self) -> float | None:
        """The attainment's effective sample size (None when not recorded)."""
        return self.attainment.effective_n if self.attainment is not None else None


def _as_dict(value: Record | Mapping[str, Any]) -> dict[str, Any]:
    return value.to_dict() if isinstance(value, Record) else dict(value)
