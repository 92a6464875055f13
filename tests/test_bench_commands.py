"""Every command quoted in bench/RESULTS.md and README.md (a line of a code block that runs ``python bench/...``,
``python pipeline/...``, ``python tune/...`` or ``bash bench/...``) parses with the current scripts, and the
configuration overrides it passes resolve; nothing runs, no Ray starts. The product's entry points are checked with
their parsers in this process (``pipeline.job``, ``tune.driver``, ...); a benchmark is run as quoted plus
``--dry-run`` (bench/cli.py: parse, resolve, exit), all of them at once in child processes. A renamed or removed
option, or a configuration key or value that no longer exists, fails here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ("bench/RESULTS.md", "README.md")
SCRIPT = re.compile(r"^(bench|pipeline|tune)/[\w/]+\.(py|sh)$")
RUNNERS = {"python", "python3", "bash"}
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}
# commands known to be stale, as "command": "why" (xfail, strict, so that the fix is noticed); none today
STALE: dict[str, str] = {}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    script: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return shlex.join(["bash" if self.script.endswith(".sh") else "python", self.script, *self.args])


def code_lines(text: str) -> list[tuple[int, str]]:
    """The lines inside ``` fences, a trailing-backslash continuation joined onto its first line."""
    out, fenced, pending = [], False, None
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, pending = not fenced, None
            continue
        if not fenced:
            continue
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (n, line.strip())
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        out.append(pending)
        pending = None
    return out


def command_of(doc: str, n: int, line: str) -> Command | None:
    """The script and its arguments in one shell line (environment assignments, ``nice``, ``ray job submit --``
    and the like before it; a comment or a following ``&&`` command after it), or None."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        if SCRIPT.search(line):
            raise
        return None
    for i, w in enumerate(words[:-1]):
        if (w in RUNNERS or w.endswith("/python")) and SCRIPT.match(words[i + 1]):
            args = []
            for a in words[i + 2 :]:
                if a in SHELL_OPERATORS:
                    break
                args.append(a)
            return Command(doc, n, words[i + 1], tuple(args))
    return None


def quoted_commands() -> list[Command]:
    out = []
    for doc in DOCS:
        for n, line in code_lines((REPO / doc).read_text()):
            c = command_of(doc, n, line)
            if c is not None:
                out.append(c)
    return out


def _parse(parse, args: tuple[str, ...]) -> Namespace:
    """``parse(list(args))``; an argparse error becomes an AssertionError carrying argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(list(args))
    except SystemExit as e:
        raise AssertionError(f"rejected (exit {e.code}): {err.getvalue().strip()}") from None


def _configured(ns: Namespace):
    """run.py / sweep.py: the configuration a command line asks for, resolved (None for --resume, --table or a YAML
    file named only as an example)."""
    from pipeline.config import EXPERIMENTS, config_from_args

    example_file = ns.config not in (None, *EXPERIMENTS) and not Path(ns.config).exists()
    if getattr(ns, "resume", None) or ns.table or example_file:
        return None
    return config_from_args(ns)


def check_run(args: tuple[str, ...]) -> None:
    from pipeline.job import parse_args

    _configured(_parse(parse_args, args))


def check_sweep(args: tuple[str, ...]) -> None:
    """The sweep's own settings too (search space, --point), as the driver builds them."""
    from dataclasses import replace

    from tune.driver import parse_args, settings_from_args

    ns = _parse(parse_args, args)
    cfg = _configured(ns)
    if cfg is not None:
        settings_from_args(ns, replace(cfg, train=replace(cfg.train, num_workers=max(1, cfg.train.num_workers))))


def check_compare(args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pipeline/compare.py builds its parser inside main(): run main with the work it would do replaced."""
    import pipeline.results.tracking as tracking
    import pipeline.study as study

    monkeypatch.setenv("FLOWGMM_HOME", str(tmp_path))
    monkeypatch.setattr(tracking, "ensure_store", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(study, "compare", lambda *a, **k: None)
    monkeypatch.setattr(study, "recipe", lambda *a, **k: "experiment")
    assert _parse(study.main, args) == 0


def dry_run(c: Command) -> subprocess.Popen:
    """A benchmark as quoted, with ``--dry-run`` (``bash`` for a shell script), in a child process."""
    runner = ["bash"] if c.script.endswith(".sh") else [sys.executable]
    cmd = [*runner, str(REPO / c.script), "--dry-run", *c.args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def dry_runs() -> dict[Command, tuple[int, str]]:
    """Every quoted benchmark command's dry run, started together: exit code and stderr by command."""
    procs = {c: dry_run(c) for c in COMMANDS if c.script.startswith("bench/")}
    return {c: (p.wait(timeout=300), p.communicate()[1]) for c, p in procs.items()}


def check_bench(c: Command, dry_runs: dict[Command, tuple[int, str]]) -> None:
    rc, err = dry_runs[c] if c in dry_runs else _finished(dry_run(c))
    assert rc == 0, f"rejected (exit {rc}): {err.strip()[-600:]}"


def _finished(p: subprocess.Popen) -> tuple[int, str]:
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def check(c: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dry_runs: dict) -> None:
    assert (REPO / c.script).is_file(), f"{c.script} does not exist"
    if c.script.startswith("bench/"):
        check_bench(c, dry_runs)
    elif c.script == "pipeline/run.py":
        check_run(c.args)
    elif c.script == "tune/sweep.py":
        check_sweep(c.args)
    elif c.script == "pipeline/compare.py":
        check_compare(c.args, monkeypatch, tmp_path)
    elif c.script == "pipeline/score.py":
        from pipeline.results.score import parse_args

        _parse(parse_args, c.args)
    elif c.script == "pipeline/serve.py":
        from pipeline.results.serve_app import parse_args

        _parse(parse_args, c.args)
    else:
        raise AssertionError(f"{c.script}: no parser known to this test; add it to check()")


COMMANDS = quoted_commands()


def _case(c: Command):
    marks = [pytest.mark.xfail(strict=True, reason=STALE[str(c)])] if str(c) in STALE else []
    return pytest.param(c, id=f"{c.doc}:{c.line}", marks=marks)


@pytest.mark.parametrize("command", [_case(c) for c in COMMANDS])
def test_quoted_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dry_runs) -> None:
    try:
        check(command, monkeypatch, tmp_path, dry_runs)
    except Exception as e:  # the failure names the document, the line and the command as quoted
        raise AssertionError(f"{command.doc}:{command.line}: `{command}`: {e}") from None


def test_every_document_quotes_commands_of_every_kind() -> None:
    found = {(c.doc, c.script.split("/")[0]) for c in COMMANDS}
    assert {("bench/RESULTS.md", "bench"), ("bench/RESULTS.md", "pipeline"), ("bench/RESULTS.md", "tune")} <= found
    assert ("README.md", "pipeline") in found


@pytest.mark.parametrize(
    "line",
    [
        "python bench/bench_ingest.py --data-dir ../shared/data",  # the option RESULTS.md once quoted
        "python bench/bench_train_step.py --settings reference,fast_couplings",  # the compile unit removed
        "python pipeline/run.py --config moons train.method=supervised",  # the labels-only method's old name
        "bash bench/gpu_check.sh --fast",
    ],
)
def test_a_removed_option_or_key_fails(line: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = command_of("test", 1, line)
    assert c is not None
    with pytest.raises(Exception):  # noqa: B017 - argparse's rejection or the configuration's ConfigError
        check(c, monkeypatch, tmp_path, {})


def test_commands_are_found_through_prefixes_continuations_and_comments() -> None:
    text = (
        "```\n"
        "RAY_AUTH_MODE=disabled nice -n 15 .venv/bin/python bench/bench_score.py --rows 10 \\\n"
        "    --json b.json   # a comment\n"
        "ray job submit --working-dir . -- python pipeline/run.py --config mnist && echo done\n"
        "```\n"
        "python pipeline/run.py --outside-a-code-block\n"
    )
    found = [command_of("t", n, line) for n, line in code_lines(text)]
    assert [str(c) for c in found if c] == [
        "python bench/bench_score.py --rows 10 --json b.json",
        "python pipeline/run.py --config mnist",
    ]


@pytest.mark.parametrize("module", ["bench/record.py", "bench/cli.py"])
def test_the_benchmarks_shared_pieces_run_their_examples(module: str, tmp_path: Path) -> None:
    """bench/record.py (the JSON with command, commit, machine, date and figures; the block for RESULTS.md) and
    bench/cli.py (--dry-run) run their docstring examples."""
    p = subprocess.run([sys.executable, "-m", "doctest", module], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
