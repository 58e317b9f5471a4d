"""Build a running local engine from configs: load the model once, size the KV budget, start."""

from __future__ import annotations

from engine.config import EngineConfig, SchedulerConfig
from engine.engine import Engine
from engine.models import LoadedModel, kv_budget_tokens, load_model
from engine.runner import ModelRunner


def start_engine(config: EngineConfig, sched_config: SchedulerConfig) -> tuple[Engine, LoadedModel]:
    """Load `config.model` and start an engine thread over it (raises ModelLoadError)."""
    loaded = load_model(config)
    engine = Engine(ModelRunner(loaded), sched_config, kv_budget_tokens(loaded, config),
                    eos_token_id=loaded.eos_token_id, max_model_len=loaded.max_context_tokens)
    return engine.start(), loaded
