"""Where a benchmark leaves its figures: ``bench/results/NAME.json`` (written atomically: the command as run, the
commit, the machine, the date and the figures) and, on stdout, the Markdown block it contributes to
``bench/RESULTS.md`` (a line naming the command, date, commit and machine, then the script's own Markdown).

    >>> import json, os, tempfile
    >>> os.environ["FLOWGMM_BENCH_RESULTS"] = tempfile.mkdtemp()
    >>> path = write_result("example", {"rows_per_s": 431.0}, "| rows/s |\\n|---|\\n| 431 |")  # doctest: +ELLIPSIS
    <!-- .../example.json -->
    ...
    <BLANKLINE>
    | rows/s |
    |---|
    | 431 |
    >>> sorted(json.loads(path.read_text()))
    ['command', 'commit', 'date', 'figures', 'machine']
    >>> del os.environ["FLOWGMM_BENCH_RESULTS"]

``FLOWGMM_BENCH_RESULTS`` moves the JSON elsewhere (a quick check that is no result); under pytest the default is a
temporary directory, so that a test running a benchmark never rewrites the committed results.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def results_dir() -> Path:
    """``$FLOWGMM_BENCH_RESULTS``, else a temporary directory under pytest, else ``bench/results``."""
    if os.environ.get("FLOWGMM_BENCH_RESULTS"):
        return Path(os.environ["FLOWGMM_BENCH_RESULTS"])
    if "PYTEST_CURRENT_TEST" in os.environ:
        return Path(tempfile.gettempdir()) / "flowgmm-bench-results"
    return RESULTS


def commit() -> str:
    """``git rev-parse HEAD`` of this checkout, ``+dirty`` when tracked files have uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if head and dirty else "")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict[str, Any]:
    """Cores, RAM, CPU model, GPU name (None without one), load average now, Python and the stack's versions."""
    return {
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "cpu": _cpu_model(),
        "gpu": _gpu(),
        "load_average_1m": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        **{p: _version(p) for p in ("torch", "ray", "mlflow")},
    }


def command_line(argv: list[str]) -> str:
    """``argv`` as a shell line, the script relative to the repository: ``python bench/x.py --a 1``."""
    script = Path(argv[0]).resolve() if argv else None
    if script is not None and script.is_relative_to(REPO):
        argv = [str(script.relative_to(REPO)), *argv[1:]]
    return "python " + shlex.join(argv)


def describe(m: dict[str, Any]) -> str:
    """One line for the reader: ``2 cores (CPU model), 24.0 GiB, no GPU, load 5.5; Python 3.11, torch 2.x``."""
    device = f"GPU {m['gpu']}" if m["gpu"] else "no GPU"
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB, {device}, load {m['load_average_1m']}; "
        f"Python {m['python']}, torch {m['torch']}"
    )


def write_result(name: str, figures: dict[str, Any], markdown: str) -> Path:
    """Write ``<results>/NAME.json`` atomically and print the Markdown block for bench/RESULTS.md; the JSON's path."""
    record = {
        "command": list(sys.argv),
        "commit": commit(),
        "machine": machine(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "figures": figures,
    }
    path = results_dir() / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(
        f"<!-- {shown} -->\n`{command_line(record['command'])}`  \n"
        f"{record['date'][:16].replace('T', ' ')}, commit {record['commit'][:12]}"
        f"{'+dirty' if record['commit'].endswith('+dirty') else ''}; {describe(record['machine'])}\n\n"
        f"{markdown.strip()}",
        flush=True,
    )
    return path
