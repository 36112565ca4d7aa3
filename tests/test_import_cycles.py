"""No import cycles among first-party modules, and the installed package never imports the root script.

The graph is built with ``ast`` from every ``import`` in harness/, models/, tasks/ and leaderboard.py, at module
level and inside functions alike (a lazy import still ties two modules together). An edge goes to the module named:
``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``. Parent packages are not implied
(importing ``a.b.c`` runs ``a/b/__init__.py``, but ``__init__`` re-exports would otherwise read as cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "models", "tasks")
ROOT_SCRIPTS = ("leaderboard",)


def module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    for script in ROOT_SCRIPTS:
        if (ROOT / f"{script}.py").exists():
            files[script] = ROOT / f"{script}.py"
    return files


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a name inside a.b: the module a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    # The checker itself must be able to fail: a cycle hidden in a function body is found.
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import thing\n")
    files = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert find_cycles(import_graph(files)) == [["a", "b"]]


def test_no_import_cycles():
    cycles = find_cycles(import_graph(module_files()))
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_package_does_not_import_root_scripts():
    graph = import_graph(module_files())
    offenders = sorted(m for m, deps in graph.items() if m.split(".")[0] in PACKAGES and deps & set(ROOT_SCRIPTS))
    assert offenders == [], f"package modules importing a root script: {offenders}"
