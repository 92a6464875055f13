"""The layout's rules, checked on the source (docs/DESIGN.md): short functions with few positional parameters,
imports that point one way (flowgmm <- core <- config <- data <- train <- results <- job), and entry scripts that
nothing imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flowgmm", "pipeline", "tune", "bench")
MAX_LINES, MAX_POSITIONAL = 60, 8
ENTRY_SCRIPTS = ("pipeline.run", "pipeline.score", "pipeline.compare", "tune.sweep")
# module prefix -> prefixes it must never import (function-level imports included)
FORBIDDEN = {
    "flowgmm": ("ray", "pipeline", "tune", "bench", "mlflow"),
    "pipeline.core": ("pipeline.config", "pipeline.data", "pipeline.train", "pipeline.results", "pipeline.job", "tune"),
    "pipeline.config": ("ray", "torch", "pipeline.data", "pipeline.train", "pipeline.results", "pipeline.job", "tune"),
    "pipeline.data": ("pipeline.train", "pipeline.results", "pipeline.job", "tune", "bench"),
    "pipeline.train": ("pipeline.results", "pipeline.job", "tune", "bench"),
    "pipeline.results": ("pipeline.job", "tune", "bench"),
    "pipeline": ("tune", "bench"),
    "tune": ("bench",),
}


def _modules():
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__init__")
            yield name, f, ast.parse(f.read_text(), filename=str(f))


def _imports(tree: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names)
    return out


def test_functions_are_short_with_few_positional_parameters():
    bad = []
    for _, f, tree in _modules():
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = n.end_lineno - n.lineno + 1
                a = n.args
                pos = len(a.posonlyargs) + len(a.args) - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)
                if lines > MAX_LINES or pos > MAX_POSITIONAL:
                    bad.append(f"{f.relative_to(REPO)}:{n.lineno} {n.name} ({lines} lines, {pos} positional)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("prefix", sorted(FORBIDDEN))
def test_imports_point_one_way(prefix):
    bad = []
    for name, f, tree in _modules():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        owner = max((p for p in FORBIDDEN if name == p or name.startswith(p + ".")), key=len)
        if owner != prefix:
            continue
        for imp in _imports(tree):
            hit = [x for x in FORBIDDEN[prefix] if imp == x or imp.startswith(x + ".")]
            if hit:
                bad.append(f"{f.relative_to(REPO)} imports {imp}")
    assert not bad, "\n".join(bad)


def test_entry_scripts_are_never_imported():
    bad = [
        f"{f.relative_to(REPO)} imports {imp}"
        for _, f, tree in [*_modules(), *[(None, p, ast.parse(p.read_text())) for p in (REPO / "tests").glob("*.py")]]
        for imp in _imports(tree)
        if any(imp == e or imp.startswith(e + ".") for e in ENTRY_SCRIPTS)
    ]
    assert not bad, "\n".join(bad)
