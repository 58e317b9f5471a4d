"""`tradeoff export-model`: a built-in model as a Hugging Face directory other engines load."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli import app
from app.errors import BadInput


@app.command("export-model")
def export_model(
    model: str = typer.Argument(..., help="the built-in to write: builtin:tiny, builtin:small, builtin:0.5b"),
    directory: Path = typer.Argument(..., help="where to write it (created; must be empty unless --force)"),
    seed: int = typer.Option(0, help="seed of its weights (a sweep's --seed builds the same model)"),
    dtype: str = typer.Option("float32", help="weights' dtype on disk: float32, bfloat16, float16"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty directory"),
    as_json: bool = typer.Option(False, "--json", help="print what was written as JSON"),
) -> None:
    """Write a built-in model (config, safetensors, tokenizer) that vLLM or SGLang serves offline,
    e.g. `python -m vllm.entrypoints.openai.api_server --model DIR`."""
    from engine.export_model import ExportDirError, check_destination, export_builtin
    from engine.models import ModelLoadError, builtin_names

    if model not in builtin_names():  # before torch builds anything
        raise BadInput(f"cannot export {model!r}: only built-in models export; use one of "
                       f"{', '.join(builtin_names())}")
    try:
        check_destination(directory, force)
        files = export_builtin(model, directory, seed, dtype)
    except (ExportDirError, ModelLoadError) as exc:
        raise BadInput(str(exc)) from None
    if as_json:
        print(json.dumps({"model": model, "directory": str(directory.resolve()), "seed": seed,
                          "dtype": dtype, "files": files}))
    else:
        print(f"wrote {model} (seed {seed}, {dtype}) to {directory}: {', '.join(files)}")
