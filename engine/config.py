"""Engine and batching configuration: flat, frozen, validated at construction (cheap checks only)."""

from __future__ import annotations

from dataclasses import dataclass

from common.vocab import POLICIES, Policy


class ConfigError(ValueError):
    """Bad user input in a configuration; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class SchedulerConfig:
    """The batching knobs a sweep varies."""

    policy: Policy = "continuous"
    max_batch_size: int = 8
    max_wait_ms: float = 0.0
    # `adaptive` only: per-request targets the policy steers by (the profile's resolved SLO
    # thresholds); None = no such SLO. The other policies ignore them.
    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None
    # Prefill token budget (vLLM's name): the most tokens one step processes, decodes included;
    # longer prompts are prefilled in chunks across steps (Sarathi-Serve). None = no chunking.
    max_num_batched_tokens: int | None = None
    # Automatic prefix caching (vLLM's name): computed blocks of earlier prompts and outputs are
    # reused instead of recomputed (engine/prefix_cache.py). Off by default on this engine.
    enable_prefix_caching: bool = False
    # The most of the KV budget cached blocks may hold; running requests take it back (the
    # least recently used blocks are evicted when an admission needs the room).
    prefix_cache_share: float = 0.5

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; use one of: {', '.join(POLICIES)}")
        if int(self.max_batch_size) != self.max_batch_size or self.max_batch_size < 1:
            raise ConfigError(f"batch size must be an integer >= 1, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms < float("inf"):  # also rejects NaN
            raise ConfigError(f"max wait must be a finite number >= 0 ms, got {self.max_wait_ms}")
        for name in ("ttft_slo_ms", "tpot_slo_ms"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a finite number of ms > 0, got {value}")
        if not 0 <= self.prefix_cache_share <= 1:  # also rejects NaN
            raise ConfigError(f"prefix_cache_share must be in [0, 1], got {self.prefix_cache_share}")
        self._check_token_budget()

    def _check_token_budget(self) -> None:
        budget = self.max_num_batched_tokens
        if budget is None:
            return
        if int(budget) != budget or budget < 1:
            raise ConfigError(f"max_num_batched_tokens must be an integer >= 1 or none, got {budget}")
        if self.policy != "continuous":
            raise ConfigError(f"max_num_batched_tokens needs policy continuous, not {self.policy}; "
                              "drop it or use --policies continuous")
        if budget < self.max_batch_size:  # every running row decodes one token per step
            raise ConfigError(f"max_num_batched_tokens ({budget}) must be >= the batch size "
                              f"({self.max_batch_size}), as in vLLM; raise it or lower the batch size")

    @property
    def label(self) -> str:
        """Short label, e.g. `continuous/b8/w5ms`, used in logs and legends."""
        label = f"{self.policy}/b{self.max_batch_size}/w{self.max_wait_ms:g}ms"
        if self.max_num_batched_tokens is not None:
            label += f"/t{self.max_num_batched_tokens}"
        return label + "/pc" * self.enable_prefix_caching


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build a local engine: the model, where it runs, and how it batches."""

    model: str = "builtin:tiny"
    device: str = "auto"  # auto = cuda, then mps, then cpu
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 elsewhere
    trust_remote_code: bool = False
    # KV-cache budget in tokens; None derives it (free device memory on CUDA, cpu_kv_cache_gb on CPU)
    kv_budget_tokens: int | None = None
    cpu_kv_cache_gb: float = 2.0
    gpu_memory_utilization: float = 0.85
    seed: int = 0
    # torch.compile the decode step; None = on with CUDA (per-step Python and launch overhead
    # dominate a small model's decode there), off elsewhere (compiling costs minutes on a CPU).
    compile_decode: bool | None = None

    def should_compile(self, device_type: str) -> bool:
        """Whether the decode step is compiled on this device type."""
        return device_type == "cuda" if self.compile_decode is None else self.compile_decode

    def __post_init__(self) -> None:
        if self.kv_budget_tokens is not None and self.kv_budget_tokens < 1:
            raise ConfigError(f"KV budget must be >= 1 token, got {self.kv_budget_tokens}")
        if self.cpu_kv_cache_gb <= 0:
            raise ConfigError(f"cpu_kv_cache_gb must be > 0, got {self.cpu_kv_cache_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("gpu_memory_utilization must be in (0, 1]")
