"""What `tradeoff serve --replicas` needs of a model whose weights live in the replica processes:
its tokenizer (loaded here) and the facts the replicas reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.config import EngineConfig

if TYPE_CHECKING:
    from engine.replicas import ReplicaSet


@dataclass(frozen=True)
class _ModelConfig:
    vocab_size: int


@dataclass(frozen=True)
class _ModelStub:
    config: _ModelConfig  # the shape of a HF model's `.config.vocab_size`


@dataclass(frozen=True)
class ServedModel:
    """What the HTTP server needs of a model whose weights live in the replicas: its tokenizer."""

    tokenizer: Any
    model: _ModelStub
    max_context_tokens: int

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def served_model(config: EngineConfig, replicas: ReplicaSet) -> ServedModel:
    """The tokenizer (loaded here, weights stay in the replicas) and the replicas' model facts."""
    from engine.models import BUILTIN_PREFIX, build_byte_tokenizer

    if config.model.startswith(BUILTIN_PREFIX):
        tokenizer = build_byte_tokenizer()
    else:  # the replicas just loaded it, so it is in the local cache
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.model, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    info = replicas.replicas[0].info
    return ServedModel(tokenizer, _ModelStub(_ModelConfig(info["vocab_size"])), info["max_context_tokens"])
