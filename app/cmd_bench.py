"""`tradeoff bench`: engine vs its ceiling and baselines, ratios from one run."""

from __future__ import annotations

import typer

from app.cli import app
from app.errors import BadInput
from app.output import print_json, print_pairs
from app.parsing import parse_list

COMPILE_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


@app.command()
def bench(
    model: str = typer.Option("builtin:small", help="model to measure"),
    device: str = typer.Option("auto", help="auto | cuda | mps | cpu"),
    repeats: int = typer.Option(3, help="interleaved rounds; each figure is the median"),
    decode_batches: str | None = typer.Option(
        None, "--decode-batches", help="also decode tok/s at these batch sizes, e.g. 1,8,32"),
    decode_only: bool = typer.Option(False, "--decode-only", help="only the --decode-batches figures"),
    compile_decode: str = typer.Option(
        "auto", "--compile-decode", help="torch.compile the decode step: auto (on with CUDA) | on | off"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Measure engine overhead and batching gains on a fixed offline workload."""
    from experiments.bench import run_bench

    if repeats < 1:
        raise BadInput(f"--repeats must be >= 1, got {repeats}")
    batches = parse_list("--decode-batches", decode_batches, int) if decode_batches else None
    if batches is not None and min(batches) < 1:
        raise BadInput(f"--decode-batches must be >= 1, got {decode_batches}")
    if decode_only and not batches:
        raise BadInput("--decode-only needs --decode-batches, e.g. --decode-batches 1,8,32")
    if compile_decode not in COMPILE_CHOICES:
        raise BadInput(f"--compile-decode must be auto, on or off, got {compile_decode!r}")
    result = run_bench(model, device, repeats=repeats, decode_batches=batches, is_decode_only=decode_only,
                       compile_decode=COMPILE_CHOICES[compile_decode])
    if json_out:
        print_json(result)
        return
    keys = ("model", "device", "engine_vs_raw", "continuous_vs_static", "continuous_vs_hf_generate")
    print_pairs([(k, result[k]) for k in keys if k in result]
                + [(f"{k} tok/s", v) for k, v in result.get("tok_s", {}).items()]
                + [(f"decode batch {k} tok/s", v) for k, v in result.get("decode_tok_s", {}).items()])
