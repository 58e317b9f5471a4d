"""The `tradeoff` command line: a thin router; each command builds a validated spec and calls
the same library functions the dashboard calls."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from app.errors import EXIT_BAD_INPUT, EXIT_FAILURE, BadInput

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tune the throughput/latency trade-off of LLM inference.",
)


# command -> the module that defines it; main() imports only what the command line needs, so
# quick commands (recommend, sweeps, trials) skip the imports of the others.
COMMAND_MODULES: dict[str, str] = {
    "trial": "cmd_trial", "bench": "cmd_bench", "serve": "cmd_serve", "ui": "cmd_ui",
    "sweep": "cmd_sweep", "sweeps": "cmd_list", "trials": "cmd_list", "worker": "cmd_sweep",
    "search": "cmd_search", "mock-server": "cmd_mock",
    "recommend": "cmd_analysis", "export": "cmd_analysis", "profiles": "cmd_analysis",
    "report": "cmd_report", "demo": "cmd_demo", "export-model": "cmd_export_model",
    "calibrate": "cmd_calibrate",
}


@app.callback()
def _group() -> None:
    """Tune the throughput/latency trade-off of LLM inference."""
    # A callback keeps `tradeoff` a command group even when one command module is loaded.


def _register(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    name = next((a for a in args if not a.startswith("-")), None)
    modules = [COMMAND_MODULES[name]] if name in COMMAND_MODULES else sorted(set(COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(f"app.{module}")  # importing registers the commands on `app`


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Library errors that mean the user's input is wrong (exit 2), not a runtime failure."""
    from db.errors import StoreError
    from engine.config import ConfigError
    from experiments.analysis.queries import NoSweepError
    from experiments.spec.grid import GridError
    from experiments.spec.profiles import ProfileError
    from experiments.targets.external import TargetSetupError

    types: list[type[BaseException]] = [BadInput, ConfigError, GridError, ProfileError, StoreError,
                                         NoSweepError, TargetSetupError]
    # A ModelLoadError can only come from engine.models if it was imported: checking this way
    # keeps torch out of fast commands' error path.
    models = sys.modules.get("engine.models")
    if models is not None:
        types.append(models.ModelLoadError)
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2 for bad input, 1 for runtime failures."""
    # Idle OpenMP threads must sleep, not spin: on a busy 2-core machine spinning slows every
    # forward pass ~10x. Must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _register(argv)
    # Under `python -m app.cli` this file is __main__; commands register on the imported module.
    typer_app = importlib.import_module("app.cli").app
    try:
        code = typer_app(args=argv, standalone_mode=False)
        # typer (non-standalone) turns Ctrl-C into Exit(130) and a command's typer.Exit(N) into
        # a *returned* N; commands themselves return None.
        if code == 130:
            print("aborted", file=sys.stderr)
            return 130
        if isinstance(code, int) and code:
            return code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_usage_error(exc):  # typer vendors click, so match click's UsageError by shape
            print(f"error: {_one_line_text(exc.format_message())}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if os.environ.get("TRADEOFF_DEBUG"):
            raise
        code = EXIT_BAD_INPUT if isinstance(exc, _bad_input_types()) else EXIT_FAILURE
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return code
    return 0


def _is_usage_error(exc: BaseException) -> bool:
    return hasattr(exc, "format_message") and getattr(exc, "exit_code", None) == EXIT_BAD_INPUT


def _one_line_text(text: str) -> str:
    return " ".join(text.split())


def _one_line(exc: BaseException) -> str:
    return _one_line_text(str(exc).strip() or type(exc).__name__)


def run() -> None:
    """Console-script wrapper (`tradeoff`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
