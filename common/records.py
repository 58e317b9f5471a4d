"""Plain records that cross package seams: request timelines in, trial metrics out.

Everything here is a frozen dataclass of plain values, so metrics, the store, the analysis and
the UI can exchange them without torch, ORM rows or clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

from common.details import TrialDetails
from common.vocab import ROUTER_ABBREV

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
STATS: tuple[str, ...] = ("p50", "p90", "p95", "p99", "mean")
# Latency metrics, all in milliseconds; every one is reported at every stat in STATS.
LATENCY_METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_wait_ms", "service_ms")
THROUGHPUT_METRICS: tuple[str, ...] = (
    "requests_per_s", "output_tokens_per_s", "total_tokens_per_s", "goodput_rps",
)


@dataclass(frozen=True)
class RequestRecord:
    """One request's timeline, seconds on one clock (the trial's), as the engine stamped it.

    scheduled_s: when the load generator meant to send it; sent_s: when it was sent;
    admitted_s: when it joined a batch (None for external servers, which don't say);
    token_times_s: arrival time of each output token; done_s: completion (or failure) time.
    """

    request_id: int
    scheduled_s: float
    sent_s: float
    admitted_s: float | None
    token_times_s: tuple[float, ...]
    done_s: float | None
    num_prompt_tokens: int
    num_output_tokens: int
    error: str | None = None
    # Session workloads: which conversation the request belongs to and its turn (1 = first).
    session_id: int | None = None
    turn: int | None = None
    # Prompt tokens the server served from its prefix cache; None where the target does not say.
    num_cached_tokens: int | None = None

    @property
    def is_ok(self) -> bool:
        return self.error is None and self.done_s is not None


@dataclass(frozen=True)
class Dist:
    """Summary of one latency metric in ms."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    count: int = 0


@dataclass(frozen=True)
class TrialConfig:
    """One point of a sweep grid: batching knobs x load level x repetition."""

    policy: str
    batch_size: int
    max_wait_ms: float
    concurrency: int | None = None  # closed loop: C virtual users, no think time
    rate: float | None = None  # open loop: mean arrivals per second
    burstiness: float = 1.0  # gamma shape; 1 = Poisson
    repetition: int = 0
    max_num_batched_tokens: int | None = None  # prefill token budget per step; None = no chunking
    replicas: int = 1  # engine replicas behind a router, measured as one target
    router: str | None = None  # one of engine.routing.ROUTERS; None for 1 replica
    speedup: float | None = None  # trace replay: time scale of the trace's arrivals (the load axis)
    prefix_caching: bool | None = None  # reuse computed prompt blocks; None: the engine's default

    @property
    def load_label(self) -> str:
        """`concurrent@8`, `poisson@2.00` / `gamma(0.5)@2.00` (as GuideLLM labels loads), `trace@2x`."""
        if self.concurrency is not None:
            return f"concurrent@{self.concurrency}"
        if self.speedup is not None:
            return f"trace@{self.speedup:g}x"
        kind = "poisson" if self.burstiness == 1 else f"gamma({self.burstiness:g})"
        return f"{kind}@{self.rate:.2f}"

    @property
    def server_label(self) -> str:
        """The server-side knobs only (what a user deploys), e.g. `continuous/b8/w5ms/t256/x2lo`."""
        parts = [self.policy, f"b{self.batch_size}", f"w{self.max_wait_ms:g}ms"]
        if self.max_num_batched_tokens is not None:
            parts.append(f"t{self.max_num_batched_tokens}")
        if self.replicas != 1:
            parts.append(f"x{self.replicas}{ROUTER_ABBREV.get(self.router or '', self.router or '')}")
        if self.prefix_caching is not None:
            parts.append("pc" if self.prefix_caching else "nopc")
        return "/".join(parts)

    @property
    def label(self) -> str:
        return f"{self.server_label}/{self.load_label}"


@dataclass(frozen=True)
class ClientLag:
    """How late the load generator itself was, in ms (send lag: sent - scheduled)."""

    p50: float
    p99: float
    max: float


@dataclass(frozen=True)
class Roofline:
    """Fraction of the hardware limit reached: decode vs memory bandwidth, prefill vs compute."""

    decode: float | None
    prefill: float | None


def config_to_dict(config: TrialConfig) -> dict:
    """JSON-ready knobs and load: `concurrency`, `speedup` (trace), or `rate` and `burstiness`."""
    out: dict = {"policy": config.policy, "batch_size": config.batch_size,
                 "max_wait_ms": config.max_wait_ms,
                 "max_num_batched_tokens": config.max_num_batched_tokens,
                 "replicas": config.replicas, "router": config.router,
                 **({} if config.prefix_caching is None else {"prefix_caching": config.prefix_caching})}
    if config.concurrency is not None:
        return {**out, "concurrency": config.concurrency}
    if config.speedup is not None:
        return {**out, "speedup": config.speedup}
    return {**out, "rate": config.rate, "burstiness": config.burstiness}


@dataclass(frozen=True)
class TrialMetrics:
    """Everything one trial measured over its window (warm-up excluded). None = no samples."""

    requests_completed: int
    requests_failed: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    ttft_ms: Dist | None
    tpot_ms: Dist | None
    itl_ms: Dist | None
    e2e_ms: Dist | None
    queue_wait_ms: Dist | None
    service_ms: Dist | None
    goodput_rps: float
    slo_attainment: float
    mean_batch_size: float | None  # None: the target shows no steps (a server without /metrics)
    peak_memory_mb: float | None
    saturated: bool
    slos: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {percentile, max_ms}
    # The trial's check of its own numbers: a lagging load generator makes every latency suspect.
    client_bound: bool = False
    client_bound_reason: str | None = None
    client_lag_ms: ClientLag | None = None
    roofline_fraction: Roofline | None = None
    # Cached / all prompt tokens of the measured requests whose target reported cached tokens;
    # None when none did (unknown, never 0 by default).
    prefix_cache_hit_rate: float | None = None
    # Extras stored whole as JSON, not as columns (common/details.py: time series, trace,
    # provenance, client check, prediction, ...).
    details: TrialDetails = field(default_factory=TrialDetails)

    def __post_init__(self) -> None:
        _typed_details(self)

    def to_dict(self) -> dict:
        """JSON-ready nested dict (the `tradeoff trial --json` shape)."""
        return {**asdict(replace(self, details=TrialDetails())), "details": self.details.to_dict()}

    def flat(self) -> dict[str, float | int | bool | str | None]:
        """Flat `metric_stat` keys (e.g. `ttft_ms_p99`) for tables, the store and the analysis."""
        out: dict[str, float | int | bool | str | None] = {}
        for key, value in asdict(replace(self, details=TrialDetails())).items():
            if key in LATENCY_METRICS:
                for stat in STATS:
                    out[f"{key}_{stat}"] = None if value is None else value[stat]
            elif key in _NESTED:
                for sub, flat_key in _NESTED[key].items():
                    out[flat_key] = None if value is None else value[sub]
            elif key not in ("slos", "details"):
                out[key] = value
        return out


def _typed_details(record: TrialMetrics | TrialRecord) -> None:
    """Hold details as a TrialDetails whatever a caller passed: records are also built from
    stored or hand-written JSON (the store's rows, synthetic trials, tests), and a dict there
    is read the tolerant way every stored version needs (TrialDetails.from_dict)."""
    if not isinstance(record.details, TrialDetails):
        details = record.details if isinstance(record.details, Mapping) else None
        object.__setattr__(record, "details", TrialDetails.from_dict(details))


# Nested metric fields and the flat keys (store columns) their parts become.
_NESTED: dict[str, dict[str, str]] = {
    "client_lag_ms": {s: f"client_lag_ms_{s}" for s in ("p50", "p99", "max")},
    "roofline_fraction": {"decode": "roofline_decode", "prefill": "roofline_prefill"},
}


@dataclass(frozen=True)
class SLO:
    """One service-level objective, resolved to an absolute threshold: `metric` at `percentile` <= max_ms."""

    metric: str  # "ttft_ms" | "tpot_ms" | "e2e_ms"
    percentile: str  # one of STATS, e.g. "p90"
    max_ms: float

    @property
    def key(self) -> str:
        """The flat metrics key this SLO reads, e.g. `ttft_ms_p90`."""
        return f"{self.metric}_{self.percentile}"


@dataclass(frozen=True)
class TrialRecord:
    """One stored trial as the store hands it out (never an ORM row)."""

    trial_id: int
    sweep_id: int
    config: TrialConfig
    status: str  # "done" | "failed" | "running"
    metrics: dict[str, float | int | bool | str | None]  # TrialMetrics.flat(); empty when failed
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    details: TrialDetails = field(default_factory=TrialDetails)  # TrialMetrics.details

    def __post_init__(self) -> None:
        _typed_details(self)

    @property
    def is_trusted(self) -> bool:
        """Done, and its numbers can be believed: no saturated queue, no lagging client."""
        return self.status == "done" and not self.metrics.get("saturated") \
            and not self.metrics.get("client_bound")
