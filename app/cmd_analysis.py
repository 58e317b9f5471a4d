"""`tradeoff recommend`, `export` and `profiles`: read stored sweeps, decide, hand off."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

from app.cli import app
from app.errors import BadInput
from app.options import DB
from app.output import print_json, print_pairs, print_table
from app.runs import open_store

PROFILE_HELP = ("workload profile whose sweep to use (default: chat; with --sweep, the sweep's "
                "own, which is what decides: its SLOs and objective)")


def _analysis(db: str | None, sweep_id: int | None, profile: str | None):
    from experiments.analysis.queries import NoSweepError, analyse, find_sweep

    store = open_store(db, create=False)
    name = None if profile is None else _known_profile(store, profile)
    try:  # the profile picks the latest sweep run with it; the sweep keeps its own snapshot
        sweep = find_sweep(store, sweep_id, name or ("chat" if sweep_id is None else None))
    except NoSweepError as exc:
        swept = _swept_profiles(store)
        where = f"; profiles with sweeps here: {', '.join(swept)}" if swept else ""
        raise BadInput(f"{exc}{where}") from None
    own = sweep.profile_name or sweep.profile.get("name")
    if name is not None and name != own:  # never silently decide with another profile
        raise BadInput(f"--profile {profile}: sweep {sweep.id} was run with profile {own!r}, "
                       f"whose SLOs and objective decide; drop --profile or pass --profile {own}")
    return analyse(store, sweep)


def _known_profile(store, profile: str) -> str:
    """The name `profile` stands for, if it names a built-in, saved or swept profile (or a file)."""
    from experiments.spec.profiles import ProfileError, load_profile

    swept = _swept_profiles(store)
    if profile in swept:
        return profile
    try:
        return load_profile(profile, store.list_profiles()).name
    except ProfileError as exc:
        where = f"; profiles with sweeps here: {', '.join(swept)}" if swept else ""
        raise BadInput(f"--profile: {exc}{where}") from None


def _swept_profiles(store) -> list[str]:
    return sorted({s.profile_name or s.profile.get("name") for s in store.list_sweeps()} - {None})


@app.command()
def recommend(
    profile: str | None = typer.Option(None, help=PROFILE_HELP),
    sweep: int | None = typer.Option(None, "--sweep", help="sweep id (default: latest of this profile)"),
    format: str = typer.Option("table", "--format", help="table | json"),
    db: str | None = DB,
) -> None:
    """Recommend the config that best serves a workload profile."""
    if format not in ("table", "json"):
        raise BadInput(f"--format must be table or json, got {format!r}")
    analysis = _analysis(db, sweep, profile)
    record = analysis.sweep
    rec = analysis.recommendation.to_dict()
    out = {"profile": record.profile_name or record.profile.get("name"), "sweep_id": record.id,
           **rec, "recommendation": rec}
    # Name the server config that carries the most within the SLOs, and how much: a search's
    # answer, or read off a grid's load levels (a grid without SLOs has no capacity).
    from app.cmd_search import capacity_summary

    if analysis.capacities:
        out["capacity"] = capacity_summary(analysis)
    if format == "json":
        print_json(out)
        return
    print(out["capacity"]["sentence"] if "capacity" in out else out["explanation"])
    print()
    if out["config"]:
        print_pairs(list(out["config"].items()))
    print_table(out["slos"], ["metric", "percentile", "threshold_ms", "rule", "value", "passed"])


@app.command()
def export(
    profile: str | None = typer.Option(None, help=PROFILE_HELP),
    format: str = typer.Option(
        "yaml", "--format", help="json | yaml | vllm | triton | ray-serve | torchserve"),
    sweep: int | None = typer.Option(None, "--sweep", help="sweep id (default: latest of this profile)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write here instead of stdout"),
    db: str | None = DB,
) -> None:
    """Export the recommended config for tradeoff serve or a real server."""
    from experiments.analysis.queries import export_analysis
    from experiments.export.render import FORMATS

    if format not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    analysis = _analysis(db, sweep, profile)
    if analysis.recommendation.config is None:
        raise BadInput(f"nothing to export: {analysis.recommendation.explanation}")
    text = export_analysis(analysis, format)
    if output is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        write_atomically(output, text)


def write_atomically(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a failure never leaves a half-written file."""
    if path.is_dir():
        raise BadInput(f"--output {path} is a directory; give a file path")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise BadInput(f"--output {path}: {exc.strerror}") from None


@app.command()
def profiles(
    db: str | None = DB,
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List built-in and user workload profiles."""
    from experiments.spec.profiles import list_builtin_profiles, load_profile

    user = _user_profiles(db)
    rows = [_profile_row(load_profile(n), "built-in") for n in list_builtin_profiles()]
    rows += [_profile_row(load_profile(n, user), "user") for n in sorted(user)]
    columns = ["name", "source", "objective", "arrival", "slos", "description"]
    print_json(rows) if json_out else print_table(rows, columns)


def _user_profiles(db: str | None) -> dict[str, str]:
    from db.store import resolve_db_url

    url = resolve_db_url(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return {}  # no db yet: only built-ins; do not create one just to list
    return open_store(db, create=False).list_profiles()


def _profile_row(p, source: str) -> dict:
    slos = ", ".join(f"{m} {s.percentile} <= " + (f"{s.max_ms:g} ms" if s.max_ms is not None
                                                  else f"{s.max_x_baseline:g}x baseline")
                     for m, s in p.slos.items())
    return {"name": p.name, "source": source, "objective": p.objective,
            "arrival": p.arrival.label, "slos": slos, "description": p.description}
