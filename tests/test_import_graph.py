"""The first-party import graph has no cycle and no import against the package order
(scripts/import_graph.py), and the checker sees what it must: function-local imports,
relative imports, private names taken from another module."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "import_graph.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_packages_have_no_import_cycle():
    run = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "import cycles: 0" in run.stdout
    assert "imports against the package order: 0" in run.stdout


def test_a_cycle_through_a_function_local_import_is_found(tmp_path: Path):
    checker = load_checker()
    write(tmp_path, {
        "experiments/__init__.py": "",
        "experiments/base.py": "def pick():\n    from experiments.sub import Sub\n    return Sub\n",
        "experiments/sub.py": "from experiments.base import pick\n\nclass Sub:\n    pass\n",
        "experiments/leaf.py": "from . import base\n",
    })
    graph = checker.build(tmp_path)
    assert checker.cycles(graph.edges) == [["experiments.base", "experiments.sub"]]
    assert graph.edges["experiments.leaf"] == {"experiments.base"}  # relative import resolved


def test_private_names_and_upward_imports_are_reported(tmp_path: Path):
    checker = load_checker()
    write(tmp_path, {
        "engine/__init__.py": "",
        "engine/core.py": "from experiments import helpers\n",
        "experiments/__init__.py": "",
        "experiments/helpers.py": "def _shared():\n    pass\n",
        "experiments/user.py": ("from experiments.helpers import _shared\n"
                                "from experiments import helpers\n\nhelpers._shared()\n"),
    })
    graph = checker.build(tmp_path)
    assert graph.private == [("experiments.user", "experiments.helpers", "_shared")]
    assert checker.upward(graph.edges) == [("engine.core", "experiments.helpers")]
