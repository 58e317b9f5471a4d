"""`tradeoff export-model` names the built-in it wrote, so estimates for any engine serving the
directory start from that built-in's step costs."""

from __future__ import annotations

import json
from pathlib import Path

from engine.export_marker import MARKER_FILE, exported_builtin
from engine.export_model import export_builtin


def test_an_export_carries_a_marker_naming_its_builtin(tmp_path: Path):
    files = export_builtin("builtin:tiny", tmp_path / "tiny", seed=3)
    assert MARKER_FILE in files and "config.json" in files
    marker = json.loads((tmp_path / "tiny" / MARKER_FILE).read_text())
    assert marker == {"exported_from": "builtin:tiny", "seed": 3, "dtype": "float32"}
    assert exported_builtin(str(tmp_path / "tiny")) == "builtin:tiny"
