"""What `tradeoff export-model` leaves beside an exported built-in: a small JSON file naming it.

A served directory is otherwise anonymous (config.json says "llama", not "builtin:small"), so
estimates before anything is measured would fall back to a generic cost prior. With the marker,
any engine serving the directory gets the built-in's own prior (measured on tradeoff's engine:
a prior, not that engine's speed). No torch: the dashboard and estimates read it.
"""

from __future__ import annotations

import json
from pathlib import Path

MARKER_FILE = "tradeoff-export.json"


def marker(name: str, seed: int, dtype: str) -> dict:
    """The marker's content for built-in `name` exported with `seed` and `dtype`."""
    return {"exported_from": name, "seed": seed, "dtype": dtype}


def write_marker(directory: Path, name: str, seed: int, dtype: str) -> Path:
    """Write the marker into `directory`; return its path."""
    path = directory / MARKER_FILE
    path.write_text(json.dumps(marker(name, seed, dtype), indent=1) + "\n")
    return path


def exported_builtin(model: str) -> str | None:
    """The built-in a model directory was exported from (`builtin:small`), or None: not a
    directory, no marker, or one that cannot be read."""
    path = Path(model) / MARKER_FILE
    try:
        name = json.loads(path.read_text()).get("exported_from")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None
