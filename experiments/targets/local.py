"""A loaded local model plus its running engine: what trials and sweeps measure in-process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.records import Roofline
from engine.config import EngineConfig, SchedulerConfig
from engine.core import StepRecord
from engine.engine import Engine
from engine.factory import start_engine
from engine.models import LoadedModel, peak_memory_mb, reset_peak_memory
from engine.roofline import DevicePeaks, ModelShape, roofline_fractions


@dataclass
class LocalTarget:
    """The engine under test and the model facts the load generator needs."""

    engine: Engine
    loaded: LoadedModel
    _roofline_inputs: tuple[ModelShape, DevicePeaks | None] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, config: EngineConfig, sched_config: SchedulerConfig | None = None) -> LocalTarget:
        """Load the model once and start the engine (raises ModelLoadError)."""
        engine, loaded = start_engine(config, sched_config or SchedulerConfig())
        return cls(engine, loaded)

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of run_trial / measure_baseline that describe the model."""
        special = {self.loaded.eos_token_id, self.loaded.pad_token_id} - {None}
        return {
            "vocab_size": int(self.loaded.model.config.vocab_size),
            "max_context_tokens": self.loaded.max_context_tokens,
            "avoid_ids": sorted(special),
        }

    def memory_kwargs(self) -> dict[str, Any]:
        """Hardware hooks for run_trial: peak memory (CUDA allocator peak, or process peak RSS on
        CPU) and the roofline of the trial's steps."""
        device = self.loaded.device
        return {"memory": lambda: peak_memory_mb(device), "reset_memory": lambda: reset_peak_memory(device),
                "roofline": self.roofline}

    def roofline(self, steps: list[StepRecord]) -> Roofline | None:
        """Fractions of the device's limit the steps reached; None where the peaks are unknown."""
        if self._roofline_inputs is None:
            from engine.hardware import device_peaks, model_shape

            self._roofline_inputs = (model_shape(self.loaded),
                                     device_peaks(self.loaded.device, self.loaded.dtype))
        shape, peaks = self._roofline_inputs
        if peaks is None:
            return None
        return Roofline(*roofline_fractions(shape, peaks, steps))

    def num_replicas(self) -> int:
        return 1

    def placement(self) -> None:
        """One engine in this process: no replicas to place."""
        return None

    def close(self) -> None:
        self.engine.close()
