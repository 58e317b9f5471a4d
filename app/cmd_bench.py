"""`tradeoff bench`: engine vs its ceiling and baselines, ratios from one run."""

from __future__ import annotations

import typer

from app.cli import app
from app.output import print_json, print_pairs


@app.command()
def bench(
    model: str = typer.Option("builtin:small", help="model to measure"),
    device: str = typer.Option("auto", help="auto | cuda | mps | cpu"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Measure engine overhead and batching gains on a fixed offline workload."""
    from experiments.bench import run_bench

    result = run_bench(model, device)
    if json_out:
        print_json(result)
        return
    print_pairs([(k, result[k]) for k in ("model", "device", "engine_vs_raw",
                                          "continuous_vs_static", "continuous_vs_hf_generate")]
                + [(f"{k} tok/s", v) for k, v in result["tok_s"].items()])
