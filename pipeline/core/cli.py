"""The command-line options that the entry points share, defined once.

p = argparse.ArgumentParser()
add_config_options(p, EXPERIMENTS)  # --config, --table, --images, --smoke, --run-name, --data-dir, key=value
add_store_options(p)       # --home, --tracking-uri (run, sweep, score, compare)
add_cluster_options(p)     # --address, --storage-path (run, sweep; score takes --address only)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn, Sequence


class _Table(argparse.Action):
    """``--table PATH`` = ``--config table data.path=<absolute PATH>``, ``--images DIR`` = ``--config images
    data.path=<absolute DIR>`` (a URI stays as given; later overrides still win)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        exp = self.dest  # "table" or "images"
        if getattr(namespace, "config", None) not in (None, exp):
            how = f"set data.path=PATH instead (and data.source={exp})"
            parser.exit(2, f"error: --{exp} runs the '{exp}' experiment; with --config {namespace.config} {how}\n")
        other = "images" if exp == "table" else "table"
        if getattr(namespace, other, None):
            parser.exit(2, "error: give --table or --images, not both\n")
        path = values if "://" in values else str(Path(values).expanduser().resolve())
        setattr(namespace, exp, path)
        namespace.config = exp
        namespace.overrides = [f"data.path={path}", *(getattr(namespace, "overrides", None) or [])]


class _Config(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        for exp in ("table", "images"):
            if getattr(namespace, exp, None) and values != exp:
                how = f"set data.path=PATH instead (and data.source={exp})"
                parser.exit(2, f"error: --{exp} runs the '{exp}' experiment; with --config {values} {how}\n")
        namespace.config = values


class _Overrides(argparse.Action):
    """The ``key=value`` words; ``--table``'s / ``--images``' data.path goes first whichever order argparse reads
    them in."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        path = getattr(namespace, "table", None) or getattr(namespace, "images", None)
        namespace.overrides = [*([f"data.path={path}"] if path else []), *(values or [])]


def add_config_options(p: argparse.ArgumentParser, experiments: Sequence[str]) -> None:
    """``experiments``: the shipped experiment names (``pipeline.config.EXPERIMENTS``; core never imports config)."""
    p.add_argument(
        "--config",
        default=None,
        action=_Config,
        help=f"experiment name ({', '.join(experiments)}) or a YAML file of the same schema; default: digits",
    )
    p.add_argument(
        "--table",
        default=None,
        action=_Table,
        metavar="PATH",
        help="your own Parquet/CSV table (a 'label' column, empty = unlabeled; every other column a number): "
        "the 'table' experiment on it, i.e. --config table data.path=PATH",
    )
    p.add_argument(
        "--images",
        default=None,
        action=_Table,
        metavar="DIR",
        help="your own image folder (one subfolder per class, unlabeled images in DIR/unlabeled/; a path or URI): "
        "the 'images' experiment on it, i.e. --config images data.path=DIR",
    )
    p.add_argument("--smoke", action="store_true", help="shrink the experiment to seconds")
    p.add_argument("--run-name", default=None, help="name of this run (default: <config>-<timestamp>)")
    p.add_argument("--data-dir", default=None, help="directory of downloaded data sets (default $FLOWGMM_DATA)")
    p.add_argument("--verbose", action="store_true", help="Ray's and MLflow's own logs, and the configuration")
    p.add_argument(
        "overrides",
        nargs="*",
        action=_Overrides,
        metavar="key=value",
        help="override config fields, e.g. train.lr=3e-4",
    )


def add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=None, help="where everything is written (default $FLOWGMM_HOME or ~/.flowgmm)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite in the home)")


def add_cluster_options(p: argparse.ArgumentParser, *, storage: bool = True) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    if storage:
        p.add_argument(
            "--storage-path",
            default=None,
            help="checkpoint storage, shared by all nodes on a cluster "
            "(a path or a URI such as s3://bucket/flowgmm; default <home>/ray_results)",
        )


def exit_now(code: int) -> NoReturn:
    """End an entry script's process with ``code`` once its exit handlers have run (Ray's shutdown among them) and
    its streams are flushed, skipping the interpreter's teardown of every imported module (torch, Ray, MLflow:
    ~1.5 s of the default job's wall on 2 cores, measured with ``bench/bench_overhead.py``)."""
    import atexit
    import logging
    import os
    import sys

    try:
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
