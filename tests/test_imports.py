"""The import graph of src/: no circles, and the layers of a run import only downwards.

Built from the source with ast (every import, function-local ones too), so a circle is found before
it bites at run time, whichever module happens to be imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# From the top down: a module may import one of its own layer or below it, never one above it.
LAYERS = [
    {"src.run"},
    {"src.pipeline"},
    {"src.train", "src.evaluate"},
    {"src.models"},
    {"src.priors"},
    {"src.divergences"},
]


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module under root (a package by its __init__.py)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the modules of src it imports (a package's own submodules importing it are left out)."""
    files = module_files(root)

    def known(name: str) -> str | None:  # `from src.data import X`: the module src.data
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets += [base] + [f"{base}.{a.name}" for a in node.names]
        graph[module] = {
            t
            for t in map(known, targets)
            if t is not None and t != module and not module.startswith(t + ".")  # a submodule imports its package
        }
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_src_has_no_import_circle():
    assert circles(import_graph()) == []


def test_the_layers_of_a_run_import_only_downwards():
    graph = import_graph()
    for depth, layer in enumerate(LAYERS):
        above = set().union(*LAYERS[:depth])
        for module in layer:
            assert module in graph, f"{module} is not a module of src/ (LAYERS is out of date)"
            wrong = reachable(graph, module) & above
            assert not wrong, f"{module} imports {sorted(wrong)}, above it in the layers of a run"


def test_a_circle_is_found(tmp_path):
    """The check itself: two modules importing each other, one of them inside a function."""
    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from src.b import x\n")
    (pkg / "b.py").write_text("x = 1\n\ndef f():\n    from src import a\n")
    (pkg / "c.py").write_text("from . import b\n")
    graph = import_graph(pkg)
    assert graph["src.c"] == {"src.b"}
    assert circles(graph) == [["src.a", "src.b"]]
