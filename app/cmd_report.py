"""`tradeoff report`: one sweep's self-contained HTML report (the Recommend page's download)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from app.cli import app
from app.cmd_analysis import write_atomically
from app.errors import BadInput
from app.options import DB
from app.runs import open_store


@app.command()
def report(
    sweep: int | None = typer.Option(None, "--sweep", help="sweep id (default: the latest sweep)"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="HTML file to write (default: tradeoff-sweep-ID-PROFILE.html here)"),
    db: str | None = DB,
) -> None:
    """Write a sweep's HTML report (recommendation, capacity, Pareto frontier); it opens offline."""
    if output is not None:
        check_output(output)  # before reading the store, so a typo fails at once
    build_report, report_filename = _report_builder()
    from experiments.analysis.queries import analyse, find_sweep

    with open_store(db, create=False) as store:
        analysis = analyse(store, find_sweep(store, sweep, None))
    path = output if output is not None else Path(report_filename(analysis))
    check_output(path)
    write_atomically(path, build_report(analysis))
    print(f"wrote {path}")


def check_output(path: Path) -> None:
    """Refuse a path the report cannot be written to, saying how to fix it (BadInput)."""
    if path.is_dir():
        raise BadInput(f"--output {path} is a directory; give a file path, e.g. {path / 'report.html'}")
    parent = path.parent
    if not parent.exists():
        raise BadInput(f"--output {path}: directory {parent} does not exist; create it or give "
                       "another path")
    if not parent.is_dir():
        raise BadInput(f"--output {path}: {parent} is a file, not a directory; give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--output {path}: no permission to write in {parent}; give a path in a "
                       "directory you can write to")


def _report_builder():
    """`build_report` and `report_filename`; the chart needs plotly, which the `ui` extra brings."""
    try:
        from app.dashboard.report import build_report, report_filename
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("plotly"):
            raise
        raise BadInput("the report's chart needs the ui extra (plotly is missing); "
                       "run: pip install 'tradeoff[ui]'") from None
    return build_report, report_filename
