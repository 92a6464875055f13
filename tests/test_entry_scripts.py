"""Entry scripts run by a Python without the stack (the machine's own, outside .venv) print one line saying what to
run instead, and exit 2, instead of a traceback (pipeline.core.stack)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import stack

REPO = Path(__file__).resolve().parent.parent
ENTRIES = [
    ["pipeline/run.py", "--table", "my.csv"],
    ["pipeline/score.py", "--help"],
    ["pipeline/compare.py"],
    ["pipeline/serve.py"],
    ["tune/sweep.py", "--config", "moons"],
    ["-m", "pipeline.run"],
    ["-m", "tune.sweep"],
    ["-m", "pipeline.data"],
]


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: " ".join(e))
def test_a_python_without_the_stack_gets_one_line_and_exit_2(entry):
    # -S: no site-packages, so neither torch nor Ray nor anything else of the stack is importable
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    p = subprocess.run([sys.executable, "-S", *entry], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("flowgmm-ray needs its environment: this Python") and "has no torch" in lines[0]
    assert "bin/activate" in lines[0] and "scripts/setup.sh" in lines[0]
    assert p.stdout == ""


def test_the_line_says_where_the_environment_is_or_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stack, "ROOT", str(tmp_path / "checkout"))  # a checkout with no .venv yet
    line = stack.advice("has no torch")
    assert f"create it with `bash {tmp_path}/checkout/scripts/setup.sh`" in line
    assert f"`source {tmp_path}/checkout/.venv/bin/activate`" in line
    (tmp_path / "checkout" / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / "checkout" / ".venv" / "bin" / "python").touch()
    monkeypatch.chdir(tmp_path / "checkout")  # from the checkout: relative paths, as the README writes them
    assert "run `source .venv/bin/activate` (created by `bash scripts/setup.sh`) or use .venv/bin/python" in (
        stack.advice("has no torch")
    )


def test_an_old_python_is_named_and_the_full_stack_passes(monkeypatch, capsys):
    stack.require_stack()  # this Python (the test's) has the stack: nothing happens
    assert stack.missing() == []
    monkeypatch.setattr(sys, "version_info", (3, 8, 10, "final", 0))
    with pytest.raises(SystemExit) as e:
        stack.require_stack()
    assert e.value.code == 2
    assert "is Python 3.8, not >= 3.10" in capsys.readouterr().err
