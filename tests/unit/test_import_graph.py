"""The package's import graph: no cycle among modules, none among packages, and `llmlab.kernels` never imports
`llmlab.models`.

Every `import` and `from ... import` of a module of llmlab or hydra_plugins counts, at module level and inside
functions, and type-only ones under `if TYPE_CHECKING:` too (a cycle of types is still two modules that know each
other).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

from tests.helpers import REPO

ROOTS = ("llmlab", "hydra_plugins")


def modules(repo: Path, roots: tuple[str, ...] = ROOTS) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `roots` (a package by its `__init__.py`)."""
    out = {}
    for root in roots:
        for path in sorted((repo / root).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def all_imports(tree: ast.AST):
    """The import statements of `tree`, nested ones included."""
    return (node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom))


def targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, mods: dict[str, Path]) -> set[str]:
    """The modules of `mods` that `node` (in module `name`, file `path`) imports: relative imports resolved, and
    `from package import sub` naming the submodule."""
    if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
        wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    found = set()
    for target in wanted:
        while target and target not in mods:  # `import llmlab.x.attr`, or not one of ours (then nothing is left)
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def import_edges(repo: Path, roots: tuple[str, ...] = ROOTS) -> dict[tuple[str, str], str]:
    """(importer, imported) -> where the first such import is (`path:line`)."""
    mods = modules(repo, roots)
    edges: dict[tuple[str, str], str] = {}
    for name, path in mods.items():
        for node in all_imports(ast.parse(path.read_text(encoding="utf-8"))):
            for target in targets(name, path, node, mods):
                edges.setdefault((name, target), f"{path.relative_to(repo)}:{node.lineno}")
    return edges


def package(module: str) -> str:
    """The node of the package graph: a subpackage (`llmlab.models`) or a top-level module (`llmlab.cli`)."""
    return ".".join(module.split(".")[:2])


def package_edges(edges: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for (a, b), where in sorted(edges.items()):
        if package(a) != package(b):
            out.setdefault((package(a), package(b)), where)
    return out


def cycles(edges: dict[tuple[str, str], str]) -> list[str]:
    """One shortest cycle through each group of mutually importing nodes, as `a -> b (where) -> a (where)`."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {v: reachable(v) for v in graph}
    found, covered = [], set()
    for v in sorted(graph):
        if v in covered or v not in reach[v]:
            continue
        covered |= {u for u in reach[v] if v in reach.get(u, ())}
        parent: dict[str, str | None] = {v: None}
        queue = deque([v])
        while queue:  # breadth first from v until an edge leads back to v
            u = queue.popleft()
            if v in graph.get(u, ()):
                path = [u]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                path = [*reversed(path), v]
                break
            for w in graph.get(u, ()):
                if w not in parent:
                    parent[w] = u
                    queue.append(w)
        found.append(path[0] + "".join(f" -> {b} ({edges[a, b]})" for a, b in zip(path, path[1:])))
    return found


@pytest.fixture(scope="module")
def edges() -> dict[tuple[str, str], str]:
    return import_edges(REPO)


def test_no_module_imports_itself_through_others(edges):
    assert cycles(edges) == []


def test_no_package_imports_itself_through_others(edges):
    assert cycles(package_edges(edges)) == []


def test_kernels_do_not_import_models(edges):
    assert [
        f"{a} -> {b} ({where})"
        for (a, b), where in edges.items()
        if package(a) == "llmlab.kernels" and package(b) == "llmlab.models"
    ] == []


def test_the_graph_sees_function_level_relative_and_submodule_imports(tmp_path):
    """The checker itself, on a small package: what it must count and what it must leave out."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from .sub.c import g\n",
        "pkg/sub/__init__.py": "from . import c\n",
        "pkg/sub/c.py": "import os\nimport pkg.a.x\n",
        "pkg/sub/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import a\nfrom ..b import f\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges = import_edges(tmp_path, ("pkg",))
    assert edges == {
        ("pkg.a", "pkg.b"): "pkg/a.py:1",
        ("pkg.b", "pkg.sub.c"): "pkg/b.py:2",
        ("pkg.sub", "pkg.sub.c"): "pkg/sub/__init__.py:1",
        ("pkg.sub.c", "pkg.a"): "pkg/sub/c.py:2",
        ("pkg.sub.d", "pkg.a"): "pkg/sub/d.py:3",
        ("pkg.sub.d", "pkg.b"): "pkg/sub/d.py:4",
    }
    assert cycles(edges) == ["pkg.a -> pkg.b (pkg/a.py:1) -> pkg.sub.c (pkg/b.py:2) -> pkg.a (pkg/sub/c.py:2)"]
    assert cycles(package_edges(edges)) == [
        "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.sub (pkg/b.py:2) -> pkg.a (pkg/sub/c.py:2)"
    ]
