"""Write a built-in model as a standard Hugging Face directory (config, safetensors, tokenizer)
that other engines (vLLM, SGLang) load offline: the GPU-free, hub-free path for checking a real
engine's set-up and for tests that drive one.

The weights are the built-in's seeded weights, so `builtin:small` served by tradeoff and the
exported directory served by vLLM are the same model and decode the same greedy tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.export_marker import write_marker
from engine.models import BUILTIN_PREFIX, MAX_CONTEXT_TOKENS, ModelLoadError, build_builtin, builtin_names

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportDirError(ValueError):
    """The destination cannot take the export; the message says why and what to do."""


def check_destination(directory: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory unless `force` (nothing is written here)."""
    if directory.exists() and not directory.is_dir():
        raise ExportDirError(f"{directory} is a file; give a directory path")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise ExportDirError(f"{directory} is not empty; choose a new directory or pass --force")


def export_builtin(name: str, directory: Path, seed: int = 0, dtype: str = "float32") -> list[str]:
    """Save built-in `name` (weights from `seed`) under `directory`; return the files written."""
    if not name.startswith(BUILTIN_PREFIX) or name not in builtin_names():
        raise ModelLoadError(f"cannot export {name!r}: only built-in models export; use one of "
                             f"{', '.join(builtin_names())}")
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    model, tokenizer = build_builtin(name, seed)
    model = model.to(DTYPES[dtype])
    model.config.dtype = DTYPES[dtype]
    # An engine reads its context limit from here; the tokenizer's copy bounds prompts.
    tokenizer.model_max_length = MAX_CONTEXT_TOKENS
    directory.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line of output, not a shard-writing bar
    model.save_pretrained(directory, safe_serialization=True)
    model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_marker(directory, name, seed, dtype)  # names the built-in, so its cost prior applies
    for path in directory.iterdir():  # safetensors come 0600: a server run as another user reads them
        path.chmod(0o644)
    return sorted(p.name for p in directory.iterdir())
