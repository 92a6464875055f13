"""The layout's rules, checked on the source (docs/DESIGN.md): short functions with few positional parameters,
imports that point one way (flowgmm <- core <- config <- data <- train <- results <- job/study <- tune), entry scripts
and bench that the product never imports, and every module importable on its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flowgmm", "pipeline", "tune", "bench")
PRODUCT = ("flowgmm", "pipeline", "tune")
MAX_LINES, MAX_POSITIONAL = 60, 8
# docs/DESIGN.md, "Imports point one way": a module imports the project's modules of its own layer and the layers
# before it, nothing after (function-level and TYPE_CHECKING imports count the same)
LAYERS = (
    ("flowgmm",),
    ("pipeline.core",),
    ("pipeline.config",),
    ("pipeline.data",),
    ("pipeline.train",),
    ("pipeline.results",),
    ("pipeline.job", "pipeline.study"),
    ("tune",),
)
# thin scripts run as files; they import any layer, and nothing imports them
ENTRY_SCRIPTS = ("pipeline.run", "pipeline.score", "pipeline.compare", "pipeline.serve", "tune.sweep")
# third-party packages a layer never imports: flowgmm is plain PyTorch; the configuration is read without the stack
NEVER = {"flowgmm": ("ray", "mlflow"), "pipeline.config": ("torch", "ray", "mlflow")}


def _modules():
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__init__")
            yield name, f, ast.parse(f.read_text(), filename=str(f))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(name: str) -> int | None:
    """The index of a module's layer in LAYERS (entry scripts: after the last); None when it has none."""
    if name in ENTRY_SCRIPTS:
        return len(LAYERS)
    if name == "pipeline":  # the package itself (it imports nothing): below every pipeline layer
        return 1
    return next((i for i, layer in enumerate(LAYERS) if any(_within(name, p) for p in layer)), None)


def _imports(name: str, path: Path, tree: ast.AST) -> set[str]:
    """Every module a file imports, at any depth (functions, ``if TYPE_CHECKING``), relative imports resolved, and
    ``importlib.import_module`` / ``__import__`` calls (``<dynamic>`` when the name is not a literal)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in n.names)
        elif isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) in (
            "import_module",
            "__import__",
        ):
            arg = n.args[0] if n.args else None
            out.add(arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<dynamic>")
    return out


def _project(imp: str) -> bool:
    return any(_within(imp, p) for p in PACKAGES)


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


def _layer_problem(name: str, imp: str) -> str | None:
    """Why ``name`` may not import ``imp`` (None when it may)."""
    if imp == "<dynamic>":
        return "a module named at run time (write the import)"
    if any(_within(imp, e) for e in ENTRY_SCRIPTS):
        return "an entry script (never imported)"
    if _within(name, "bench"):
        return None
    if _within(imp, "bench"):
        return "bench (the product never imports benchmarks)"
    for owner, banned in NEVER.items():
        if _within(name, owner) and any(_within(imp, b) for b in banned):
            return f"{imp.split('.')[0]}, which {owner} never imports"
    if not _project(imp):
        return None
    if name == "pipeline":
        return "the project (every pipeline module loads pipeline/__init__.py: it imports nothing)"
    mine, theirs = _layer(name), _layer(imp)
    if mine is None:
        return "anything of the project: the importing module is in no layer (add it to LAYERS and docs/DESIGN.md)"
    if theirs is not None and theirs > mine:
        return f"{', '.join(LAYERS[theirs])}, a later layer than {', '.join(LAYERS[min(mine, len(LAYERS) - 1)])}"
    return None


def test_every_product_module_has_a_layer():
    """A new package or top-level module is placed in LAYERS (and docs/DESIGN.md) before it is written."""
    loose = [n for n in _product_modules() if _layer(n) is None]
    assert not loose, f"modules outside the layers of docs/DESIGN.md: {loose}"


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = []
    for name, f, tree in _modules():
        if _within(name, package):
            bad += [
                f"{f.relative_to(REPO)} imports {imp}: {why}"
                for imp in sorted(_imports(name, f, tree))
                if (why := _layer_problem(name, imp)) is not None
            ]
    assert not bad, "\n".join(bad)


def test_tests_import_no_entry_script_and_only_the_bench_harness():
    bad = []
    for f in sorted((REPO / "tests").glob("*.py")):
        for imp in _imports(f"tests.{f.stem}", f, ast.parse(f.read_text())):
            if any(_within(imp, e) for e in ENTRY_SCRIPTS) or (
                _within(imp, "bench") and not _within(imp, "bench.harness")
            ):
                bad.append(f"{f.relative_to(REPO)} imports {imp}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "layer, text",
    [
        ("pipeline.data", "def f():\n    from pipeline.train import step\n"),
        ("pipeline.config", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.data import x\n"),
        ("pipeline.config", "import torch\n"),
        ("flowgmm", "from ..pipeline import job\n"),
        ("pipeline.core", "import importlib\nimportlib.import_module('pipeline.results.score')\n"),
        ("tune", "from pipeline import run\n"),
        ("pipeline.results", "from bench.harness import probe_loop\n"),
    ],
)
def test_the_checker_sees_lazy_type_checking_relative_and_dynamic_imports(layer, text):
    name = f"{layer}.probe"
    found = _imports(name, REPO / (name.replace(".", "/") + ".py"), ast.parse(text))
    assert any(_layer_problem(name, imp) for imp in found), found


# ------------------------------------------------------------------------------------------ importable alone
def _product_modules() -> list[str]:
    return [n for n, _, _ in _modules() if _within(n, "flowgmm") or _within(n, "pipeline") or _within(n, "tune")]


def _third_party(names: list[str]) -> list[str]:
    out = set()
    for name, f, tree in _modules():
        if name in names:
            out.update(i for i in _imports(name, f, tree) if not _project(i) and i != "<dynamic>")
    return sorted(out)


# Imports the third-party modules once, then forks one child per project module (two at a time): each child starts
# with no project module loaded and imports one. A module that works only after another project module was imported
# (an import cycle, a name taken from a sibling's side effect) fails in its child.
_FORKS = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback
    modules, third = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for t in third:
        try:
            importlib.import_module(t)
        except Exception:
            pass  # an optional dependency or a name inside a module; the child imports it (or fails) itself
    loaded = [m for m in sys.modules if m.split(".")[0] in ("flowgmm", "pipeline", "tune", "bench")]
    assert not loaded, loaded
    running, failed = {}, 0
    def reap():
        global failed
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failed += 1
            print("FAILED", running[pid], flush=True)
        del running[pid]
    for m in modules:
        if len(running) >= 2:
            reap()
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(m)
            except BaseException:
                traceback.print_exc(limit=-3)
                os._exit(1)
            os._exit(0)
        running[pid] = m
    while running:
        reap()
    print(f"{len(modules)} modules, {failed} failed")
    sys.exit(1 if failed else 0)
    """
)


def test_every_module_imports_alone():
    import json

    mods = _product_modules()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-c", _FORKS, json.dumps(mods), json.dumps(_third_party(mods))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and f"{len(mods)} modules, 0 failed" in p.stdout, p.stdout + p.stderr[-4000:]


@pytest.mark.parametrize("module", ["flowgmm", "pipeline.config"])
def test_light_layers_stay_light_in_a_fresh_interpreter(module):
    """``import pipeline.config`` loads no torch, Ray, MLflow or data package (so a configuration can be read and
    checked anywhere); ``import flowgmm`` loads no Ray or MLflow."""
    banned = NEVER[module] + (("pipeline.data", "pipeline.train") if module == "pipeline.config" else ())
    code = f"import sys, {module}; print(' '.join(sys.modules))"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    loaded = p.stdout.split()
    assert not [m for m in loaded if any(_within(m, b) for b in banned)], f"import {module} loads {sorted(loaded)}"
