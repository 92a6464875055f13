"""A study: several jobs of one recipe (FlowGMM and FlowGMM-cons over seeds), then the comparison table of the
experiment (``pipeline.results.compare``). The ``compare`` command's entry point.

    python pipeline/compare.py --experiment flowgmm-digits            # compare what is there
    python pipeline/compare.py --recipe digits --seeds 2              # train first, then compare
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.core.cli import add_store_options
from pipeline.core.home import resolve_home
from pipeline.job import RUN_RECORD
from pipeline.job import main as run_main
from pipeline.results.compare import compare


def recipe(name: str, seeds: int, home: Path, tracking_uri: str | None, smoke: bool) -> str:
    """Train FlowGMM and FlowGMM-cons (each with its labels-only-flow and logistic-regression baselines) for
    ``seeds`` seeds on experiment ``name``; returns the MLflow experiment the runs went to (as their run records
    say: a table's experiment carries its content hash)."""
    experiment = ""
    for seed in range(seeds):
        for method in ("flowgmm", "flowgmm_cons"):
            run_name = f"compare-{name}-{method}-s{seed}"
            argv = ["--config", name, "--home", str(home), "--run-name", run_name]
            argv += [f"train.method={method}", f"train.seed={seed}", f"data.seed={seed}"]
            argv += ["--smoke"] if smoke else []
            argv += ["--tracking-uri", tracking_uri] if tracking_uri else []
            if run_main(argv) != 0:
                raise SystemExit(f"error: run {method} seed {seed} failed")
            experiment = json.loads((home / "runs" / run_name / RUN_RECORD).read_text())["experiment"]
    return experiment


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pipeline/compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default=None, help="MLflow experiment name (e.g. flowgmm-digits)")
    p.add_argument("--runs", nargs="*", default=None, help="only these run ids")
    p.add_argument("--recipe", default=None, metavar="CONFIG", help="first train the methods on this experiment")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    add_store_options(p)
    args = p.parse_args(argv)
    from pipeline.results.tracking import default_tracking_uri, ensure_store

    home = resolve_home(args.home)
    uri = args.tracking_uri or default_tracking_uri(home)
    ensure_store(uri, home)
    experiment = args.experiment
    if args.recipe:
        experiment = recipe(args.recipe, args.seeds, home, args.tracking_uri, args.smoke)
    if not experiment:
        p.error("--experiment or --recipe is required")
    compare(uri, experiment, args.runs)
    return 0
