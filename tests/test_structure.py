"""The package's structure, read from its source: every ``import`` (top-level and inside
functions) obeys the layers of ARCHITECTURE.md, no import cycle, no private name crosses a
module boundary, and classes and functions stay a readable size.

The layer contract is also checked by import-linter (``lint-imports``, ``.importlinter``); this
reading adds what grimp does not see or check: imports inside functions, private names, sizes.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Top to bottom; a module may import its own layer and the layers below it.
LAYERS: list[tuple[str, ...]] = [
    ("resnets.cli", "resnets.__main__"),
    ("resnets.evaluate", "resnets.predict", "resnets.explain", "resnets.embed", "resnets.serve", "resnets.export",
     "resnets.bench", "resnets.compare", "resnets.lr_find", "resnets.inference", "resnets.openvino",
     "resnets.demo", "resnets.summarize"),
    ("resnets.train",),
    ("resnets.data",),
    ("resnets.factory", "resnets.weights"),
    ("resnets.models",),
    ("resnets.preprocessing", "resnets.fileio", "resnets.errors", "resnets.terminal", "resnets.safepickle",
     "resnets.device", "resnets.multilabel", "resnets.metrics", "resnets.textparse", "resnets.settings",
     "resnets.timing"),
]
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60
# Packages whose modules may import the package's own modules inside functions: the CLI imports a
# command's library code when that command runs, so `resnets --help` starts without torch;
# resnets/__init__.py is the lazy public API.
LAZY_IMPORTERS = ("resnets.cli", "resnets")


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, (path, _) in MODULES.items()}


def _imports(module: str, node: ast.AST) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) pairs of one import statement, made absolute."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    base = module.split(".") if MODULES[module][1] else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [(target, alias.name) for alias in node.names]


def _owner(name: str) -> str | None:
    """The package module a dotted name lives in (``resnets.a.b.func`` -> ``resnets.a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges() -> list[tuple[str, str, str | None, bool]]:
    """(importer, imported module, imported name, inside a function) for every package import."""
    edges = []
    for module, tree in TREES.items():
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target, name in _imports(module, node):
                if not target.startswith("resnets"):
                    continue
                full = f"{target}.{name}" if name else target
                dep = _owner(full if full in MODULES else target)
                if dep and dep != module:
                    edges.append((module, dep, None if full in MODULES else name, id(node) in in_function))
    return edges


EDGES = _edges()


def _layer(module: str) -> int | None:
    for index, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return index
    return None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1
                    stack.append(child); on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop(); on_stack.discard(member); component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m != "resnets" and _layer(m) is None] == []


def test_no_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported, _, _ in EDGES:
        graph[importer].add(imported)
        graph[imported]
    assert _cycles(graph) == []


def test_cycle_finder_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_layers_are_obeyed():
    upward = sorted({f"{a} -> {b}" for a, b, _, _ in EDGES
                     if _layer(a) is not None and _layer(b) is not None and _layer(b) < _layer(a)})
    assert upward == []


def test_no_private_name_crosses_a_module():
    crossing = sorted({f"{a} imports {name} from {b}" for a, b, name, _ in EDGES
                       if name and name.startswith("_") and not name.startswith("__")})
    assert crossing == []


def test_package_modules_are_imported_at_the_top():
    late = sorted({f"{a} -> {b}" for a, b, _, inside in EDGES
                   if inside and not any(a == p or (p != "resnets" and a.startswith(p + ".")) for p in LAZY_IMPORTERS)})
    assert late == []


def _sizes(kind: type | tuple[type, ...]) -> list[tuple[int, str]]:
    return [(node.end_lineno - node.lineno + 1, f"{module}.{node.name}")
            for module, tree in TREES.items() for node in ast.walk(tree) if isinstance(node, kind)]


def test_no_class_over_250_lines():
    assert [s for s in _sizes(ast.ClassDef) if s[0] > MAX_CLASS_LINES] == []


def test_no_function_over_60_lines():
    assert [s for s in _sizes((ast.FunctionDef, ast.AsyncFunctionDef)) if s[0] > MAX_FUNCTION_LINES] == []


@pytest.mark.skipif(shutil.which("lint-imports") is None and not (Path(sys.executable).parent / "lint-imports").exists(),
                    reason="import-linter is not installed (pip install -e '.[test]')")
def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
