"""Every command quoted in bench/RESULTS.md and README.md (a line of a code block that runs ``python bench/...``,
``python pipeline/...``, ``python tune/...`` or ``bash bench/...``) parses with the current scripts: the script's own
argument parser reads the quoted arguments (nothing runs, no Ray starts), and the configuration overrides resolve
(``key=value`` words of run.py and sweep.py, and of the benchmarks that pass them to a configuration). A renamed or
removed option, or a configuration key that no longer exists, fails here."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = ("bench/RESULTS.md", "README.md")
SCRIPT = re.compile(r"^(bench|pipeline|tune)/[\w/]+\.(py|sh)$")
RUNNERS = {"python", "python3", "bash"}
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}
# README commands known to be stale (README.md is not this test's to change): strict, so that the fix is noticed
STALE = {"python pipeline/run.py --config breast_cancer train.lr=3e-4 train.epochs=30": "train.epochs no longer exists"}


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


def _resolve(config: str | None, overrides: list[str]) -> None:
    from pipeline.config import resolve

    resolve(config, overrides=overrides)


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


def check_bench(script: str, args: tuple[str, ...]) -> None:
    """A benchmark's ``build_parser()`` reads the arguments; the overrides it hands a configuration resolve."""
    module = importlib.import_module("bench." + Path(script).stem)
    ns = _parse(module.build_parser().parse_args, args)
    overrides = list(getattr(ns, "overrides", None) or [])
    configs = {
        "bench/bench_ingest.py": lambda: ns.configs.split(","),
        "bench/bench_overhead.py": lambda: [ns.config],
        "bench/gpu_mnist.py": lambda: ["mnist"],
        "bench/ssl_table.py": lambda: ns.experiments,
    }.get(script, lambda: [])()
    for config in configs:
        _resolve(config, overrides)


def check(c: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert (REPO / c.script).is_file(), f"{c.script} does not exist"
    if c.script.endswith(".sh"):
        p = subprocess.run(["bash", str(REPO / c.script), "--dry-run", *c.args], capture_output=True, text=True)
        assert p.returncode == 0, f"rejected (exit {p.returncode}): {p.stderr.strip()}"
    elif c.script.startswith("bench/"):
        check_bench(c.script, c.args)
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
def test_quoted_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        check(command, monkeypatch, tmp_path)
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
        "python bench/bench_train_step.py --settings fast_eager --syncs",
        "python pipeline/run.py --config moons train.method=supervised",  # the labels-only method's old name
        "bash bench/gpu_check.sh --fast",
    ],
)
def test_a_removed_option_or_key_fails(line: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    c = command_of("test", 1, line)
    assert c is not None
    with pytest.raises(Exception):  # noqa: B017 - argparse's rejection or the configuration's ConfigError
        check(c, monkeypatch, tmp_path)


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


def test_record_writes_its_json_and_prints_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """bench/record.py: the JSON (command, commit, machine, date, figures) lands where asked, whole, and the block
    for RESULTS.md names the command and the machine before the script's own Markdown."""
    import doctest
    import json
    import sys

    import bench.record as record

    assert doctest.testmod(record).failed == 0
    monkeypatch.setenv("FLOWGMM_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(REPO / "bench" / "x.py"), "--rows", "10"])
    path = record.write_result("x", {"rows_per_s": 1.5}, "| a |\n|---|\n| 1 |")
    saved = json.loads(path.read_text())
    assert path == tmp_path / "x.json" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert saved["figures"] == {"rows_per_s": 1.5} and saved["command"][1:] == ["--rows", "10"]
    assert saved["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", saved["commit"])
    assert {"cores", "ram_gib", "cpu", "gpu", "python", "torch"} <= set(saved["machine"])
    out = capsys.readouterr().out
    assert "`python bench/x.py --rows 10`" in out and out.rstrip().endswith("| a |\n|---|\n| 1 |")
