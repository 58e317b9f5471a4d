"""`tradeoff bench`: engine vs its ceiling and baselines, ratios from one run."""

from __future__ import annotations

import typer

from app.cli import app
from app.errors import BadInput
from app.output import print_json, print_pairs


@app.command()
def bench(
    model: str = typer.Option("builtin:small", help="model to measure"),
    device: str = typer.Option("auto", help="auto | cuda | mps | cpu"),
    repeats: int = typer.Option(3, help="interleaved rounds; each figure is the median"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Measure engine overhead and batching gains on a fixed offline workload."""
    from experiments.bench import run_bench

    if repeats < 1:
        raise BadInput(f"--repeats must be >= 1, got {repeats}")
    result = run_bench(model, device, repeats=repeats)
    if json_out:
        print_json(result)
        return
    print_pairs([(k, result[k]) for k in ("model", "device", "engine_vs_raw",
                                          "continuous_vs_static", "continuous_vs_hf_generate")]
                + [(f"{k} tok/s", v) for k, v in result["tok_s"].items()])
