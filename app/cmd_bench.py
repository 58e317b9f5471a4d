"""`tradeoff bench`: engine vs its ceiling and baselines, ratios from one run."""

from __future__ import annotations

import sys

import typer

from app.cli import app
from app.errors import BadInput
from app.output import print_json, print_pairs
from app.parsing import parse_list

COMPILE_CHOICES: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
VS_DTYPES = ("auto", "float32", "bfloat16")  # both servers take these names


@app.command()
def bench(
    model: str = typer.Option("builtin:small", help="model to measure"),
    device: str = typer.Option("auto", help="auto | cuda | mps | cpu"),
    repeats: int = typer.Option(3, help="interleaved rounds; each figure is the median"),
    decode_batches: str | None = typer.Option(
        None, "--decode-batches", help="also decode tok/s at these batch sizes, e.g. 1,8,32"),
    decode_only: bool = typer.Option(False, "--decode-only", help="only the --decode-batches figures"),
    compile_decode: str = typer.Option(
        "auto", "--compile-decode",
        help="torch.compile the decode step: auto (on with CUDA) | on | off; on a CPU it costs ~1 min "
             "of compiling (Llama-family models) and gains ~5% on builtin:small"),
    threads: str = typer.Option(
        "auto", "--threads", help="engine intra-op threads: auto (all cores but one) or a number"),
    vs: str | None = typer.Option(
        None, "--vs", help="instead: `tradeoff serve` against vllm (started here) or a running "
        "OpenAI-compatible server's URL, same model, chat profile, 1 and 16 users"),
    engine_python: str | None = typer.Option(
        None, "--engine-python", help="with --vs vllm: the Python vLLM is installed in "
        "(default .venv-vllm/bin/python if present)"),
    dtype: str = typer.Option(
        "auto", "--dtype", help="with --vs: both servers' dtype, float32 or bfloat16 (auto: tradeoff "
        "serve's own: bfloat16 on CUDA, float32 elsewhere)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Measure engine overhead and batching gains on a fixed offline workload."""
    from experiments.bench import run_bench

    if repeats < 1:
        raise BadInput(f"--repeats must be >= 1, got {repeats}")
    if vs is not None or engine_python is not None:
        _bench_vs(model, vs, device, repeats, engine_python, json_out, dtype)
        return
    if dtype != "auto":
        raise BadInput("--dtype goes with --vs (the in-process bench runs the engine's own dtype)")
    batches = parse_list("--decode-batches", decode_batches, int) if decode_batches else None
    if batches is not None and min(batches) < 1:
        raise BadInput(f"--decode-batches must be >= 1, got {decode_batches}")
    if decode_only and not batches:
        raise BadInput("--decode-only needs --decode-batches, e.g. --decode-batches 1,8,32")
    if compile_decode not in COMPILE_CHOICES:
        raise BadInput(f"--compile-decode must be auto, on or off, got {compile_decode!r}")
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise BadInput(f"--threads must be auto or a number >= 1, got {threads!r}")
    result = run_bench(model, device, repeats=repeats, decode_batches=batches, is_decode_only=decode_only,
                       compile_decode=COMPILE_CHOICES[compile_decode],
                       num_threads=None if threads == "auto" else int(threads))
    if json_out:
        print_json(result)
        return
    keys = ("model", "device", "forward", "num_threads", "engine_vs_raw", "continuous_vs_static",
            "continuous_vs_static_steps", "continuous_vs_hf_generate")
    print_pairs([(k, result[k]) for k in keys if k in result]
                + [(f"{k} tok/s", v) for k, v in result.get("tok_s", {}).items()]
                + [(f"decode batch {k} tok/s", v) for k, v in result.get("decode_tok_s", {}).items()])


def _bench_vs(model: str, vs: str | None, device: str, repeats: int, engine_python: str | None,
              json_out: bool, dtype: str = "auto") -> None:
    """`--vs`: tradeoff serve against another server (experiments/bench_vs.py)."""
    from experiments.bench_vs import check_vs, run_bench_vs
    from experiments.targets.engines import EngineUnavailableError

    if vs is None:
        raise BadInput("--engine-python goes with --vs vllm")
    if dtype not in VS_DTYPES:
        raise BadInput(f"--dtype must be one of {', '.join(VS_DTYPES)}, got {dtype!r}")
    try:
        check_vs(vs, engine_python)
    except (ValueError, EngineUnavailableError) as exc:
        raise BadInput(str(exc)) from None
    result = run_bench_vs(model, vs, device, repeats, engine_python,
                          log=lambda line: print(line, file=sys.stderr, flush=True), dtype=dtype)
    if json_out:
        print_json(result)
        return
    other = next(name for name in result["servers"] if name != "tradeoff")
    for load in result["loads"]:
        ours, theirs = load["tradeoff"], load[other]
        print_pairs([(f"{load['users']} users: output tok/s (tradeoff / {other})",
                      f"{ours['output_tok_s']} / {theirs['output_tok_s']} = {load['tok_s_ratio']}x"),
                     ("  TTFT p50, p90 (ms)", f"{ours['ttft_ms_p50']}, {ours['ttft_ms_p90']} / "
                                              f"{theirs['ttft_ms_p50']}, {theirs['ttft_ms_p90']}"),
                     ("  TPOT p50 (ms)", f"{ours['tpot_ms_p50']} / {theirs['tpot_ms_p50']}")])
