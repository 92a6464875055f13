"""The benchmarks' shared command-line piece: ``--dry-run`` parses a command line, resolves the configurations it
names with its ``key=value`` overrides, and exits 0 before anything runs (a bad option exits 2 through argparse, a
bad override 2 with one line). ``tests/test_bench_commands.py`` runs it for every command quoted in bench/RESULTS.md
and README.md.

    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_dry_run(p)
    >>> exit_if_dry_run(p.parse_args([]), ["moons"], ["train.lr=1e-3"])  # not a dry run: returns
    >>> exit_if_dry_run(p.parse_args(["--dry-run"]), ["moons"], ["train.lr=1e-3"])
    Traceback (most recent call last):
    SystemExit: 0
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable


def add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="check the arguments and overrides, then exit")


def exit_if_dry_run(args: argparse.Namespace, configs: Iterable[str] = (), overrides: Iterable[str] = ()) -> None:
    """With ``--dry-run``: resolve every configuration in ``configs`` with ``overrides``, then exit (0, or 2 naming
    the configuration and the bad key or value). Without it: return."""
    if not getattr(args, "dry_run", False):
        return
    from pipeline.config import ConfigError, resolve

    for config in configs:
        try:
            resolve(config, overrides=list(overrides))
        except ConfigError as e:
            print(f"error: {config}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    raise SystemExit(0)
