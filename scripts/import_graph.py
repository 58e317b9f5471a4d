"""The first-party import graph: cycles, imports against the package order, large modules, and
private names imported across modules.

    python scripts/import_graph.py            # exit 1 on a cycle or an upward import
    python scripts/import_graph.py --strict   # also on a large module or a private import

Every module of app, common, engine, server, mock, db and experiments is parsed (never imported,
so nothing loads torch); an edge is any `import` / `from ... import` of a first-party module
anywhere in the file, function-local and TYPE_CHECKING imports included: an import hidden in a
function is still a dependency, and hiding one is how a cycle goes unseen. Cycles are reported
as strongly connected components (Tarjan).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "engine", "server", "mock", "db", "experiments", "app")
# What each package may import (docs/architecture.md): common <- engine <- server, mock <- db <-
# experiments <- app, with server on engine and common only, and mock and db each on common only.
ALLOWED = {
    "common": {"common"},
    "engine": {"common", "engine"},
    "server": {"common", "engine", "server"},
    "mock": {"common", "mock"},
    "db": {"common", "db"},
    "experiments": {"common", "engine", "server", "mock", "db", "experiments"},
    "app": set(PACKAGES),
}
MAX_LINES = 400


@dataclass
class Graph:
    modules: dict[str, Path]  # dotted name -> file
    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[tuple[str, str, str]] = field(default_factory=list)  # importer, module, name


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> path, for every .py file of the first-party packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest first-party module that `name` (dotted) is or lies inside."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def _base_of(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from X import ...` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _scan(importer: str, path: Path, graph: Graph) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    deps = graph.edges.setdefault(importer, set())
    aliases: dict[str, str] = {}  # local name -> first-party module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owner(alias.name, graph.modules)
                if target is not None:
                    deps.add(target)
                    if alias.asname:
                        aliases[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(node, importer, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in graph.modules:  # `from pkg import module`
                    deps.add(sub)
                    aliases[alias.asname or alias.name] = sub
                    continue
                target = _owner(base, graph.modules)
                if target is None:
                    continue
                deps.add(target)
                if _is_private(alias.name) and target != importer:
                    graph.private.append((importer, target, alias.name))
    # `module._name` on a module bound by name (`from experiments.run import sweep; sweep._x`).
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases
                and aliases[node.value.id] != importer):
            graph.private.append((importer, aliases[node.value.id], node.attr))
    deps.discard(importer)


def build(root: Path = ROOT) -> Graph:
    graph = Graph(discover(root))
    for name, path in graph.modules.items():
        _scan(name, path, graph)
    graph.private = sorted(set(graph.private))
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (each an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a package its layer may not import (importer, imported)."""
    return sorted((a, b) for a, deps in edges.items() for b in deps
                  if b.split(".")[0] not in ALLOWED[a.split(".")[0]])


def large(modules: dict[str, Path], limit: int = MAX_LINES) -> list[tuple[str, int]]:
    sizes = ((name, len(path.read_text(encoding="utf-8").splitlines())) for name, path in modules.items())
    return sorted(((n, k) for n, k in sizes if k > limit), key=lambda nk: -nk[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true",
                        help="also fail on modules over the size limit and on private imports")
    args = parser.parse_args(argv)
    graph = build()
    found, wrong_way = cycles(graph.edges), upward(graph.edges)
    big, private = large(graph.modules), graph.private
    num_edges = sum(len(d) for d in graph.edges.values())
    print(f"{len(graph.modules)} modules, {num_edges} first-party import edges")
    print(f"\nimport cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
        for a in component:
            inside = sorted(b for b in graph.edges[a] if b in component)
            print(f"    {a} imports {', '.join(inside)}")
    print(f"\nimports against the package order: {len(wrong_way)}")
    for a, b in wrong_way:
        print(f"  {a} -> {b}")
    print(f"\nmodules over {MAX_LINES} lines: {len(big)}")
    for name, lines in big:
        print(f"  {lines:5d}  {name}")
    print(f"\nprivate names imported across modules: {len(private)}")
    for importer, module, name in private:
        print(f"  {importer} uses {module}.{name}")
    failed = bool(found or wrong_way or (args.strict and (big or private)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
