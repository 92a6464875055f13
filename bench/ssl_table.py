"""The semi-supervised results table: every CPU experiment x 5 seeds, through the product's own job.

For each experiment and seed (data split and initialisation: ``data.seed = train.seed = s``) it runs
``pipeline/run.py`` twice in a fresh process: FlowGMM (with every baseline on the same split: the labels-only flow,
logistic regression, kNN, label spreading) and FlowGMM-cons (``eval.baselines=false``: the baselines are counted once
per split and seed). Each run's metrics are read back from its MLflow store. It prints accuracy (median and
min-max), calibrated NLL and ECE, bits/dim and wall time per method, and writes every run's figures to ``--json``.

    python bench/ssl_table.py --home /tmp/ssl --json /tmp/ssl/ssl_table.json          # ~40 min on 2 CPU cores
    python bench/ssl_table.py --experiments moons --seeds 0 1 --home /tmp/ssl-quick   # a quick look

Runs already in ``--json`` are not repeated (so an interrupted table resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("digits", "moons", "breast_cancer")
METHODS = {"FlowGMM": "flowgmm", "FlowGMM-cons": "flowgmm_cons"}
KEEP = (
    "test_accuracy_calibrated",
    "test_nll",
    "test_ece",
    "test_nll_calibrated",
    "test_ece_calibrated",
    "test_bpd",
    "sample_class_share",
    "labels_only_flow_test_accuracy_calibrated",
    "labels_only_flow_test_nll_calibrated",
    "labels_only_flow_test_ece_calibrated",
    "baseline_logreg_test_accuracy",
    "baseline_knn_test_accuracy",
    "baseline_label_spreading_test_accuracy",
    "time_train_s",
    "time_baseline_s",
)
# rows of the table: (label, metric for accuracy, metric for calibrated NLL, metric for calibrated ECE, from method)
ROWS = (
    ("FlowGMM", "test_accuracy_calibrated", "test_nll_calibrated", "test_ece_calibrated", "FlowGMM"),
    ("FlowGMM-cons", "test_accuracy_calibrated", "test_nll_calibrated", "test_ece_calibrated", "FlowGMM-cons"),
    (
        "labels-only flow",
        "labels_only_flow_test_accuracy_calibrated",
        "labels_only_flow_test_nll_calibrated",
        "labels_only_flow_test_ece_calibrated",
        "FlowGMM",
    ),
    ("logistic regression", "baseline_logreg_test_accuracy", None, None, "FlowGMM"),
    ("k-nearest neighbours", "baseline_knn_test_accuracy", None, None, "FlowGMM"),
    ("label spreading", "baseline_label_spreading_test_accuracy", None, None, "FlowGMM"),
)


def run_one(home: Path, experiment: str, method: str, seed: int) -> dict[str, Any]:
    """One product job in its own process; its metrics from the MLflow store, plus the wall time."""
    name = f"{experiment}-{METHODS[method]}-s{seed}"
    cmd = [sys.executable, str(ROOT / "pipeline" / "run.py"), "--config", experiment, "--run-name", name]
    cmd += [f"data.seed={seed}", f"train.seed={seed}", f"train.method={METHODS[method]}"]
    if method != "FlowGMM":
        cmd.append("eval.baselines=false")
    env = {**os.environ, "FLOWGMM_HOME": str(home)}
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"experiment": experiment, "method": method, "seed": seed, "wall_s": wall, **metrics_of(home, name)}


def metrics_of(home: Path, run_name: str) -> dict[str, float]:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"attributes.run_name = '{run_name}'")
    m = runs[0].data.metrics
    return {k: m[k] for k in KEEP if k in m}


def summarize(results: list[dict[str, Any]], experiment: str) -> list[dict[str, Any]]:
    """One row per method: accuracy median / min / max, calibrated NLL and ECE medians, over the seeds."""
    out = []
    for label, acc, nll, ece, source in ROWS:
        rs = [r for r in results if r["experiment"] == experiment and r["method"] == source and acc in r]
        if not rs:
            continue
        accs = [r[acc] for r in rs]
        row = {"method": label, "n": len(rs), "acc_median": statistics.median(accs), "acc_min": min(accs)}
        row["acc_max"] = max(accs)
        for key, metric in (("nll", nll), ("ece", ece)):
            row[key] = statistics.median(r[metric] for r in rs) if metric else None
        if label.startswith("FlowGMM"):
            row["bpd"] = statistics.median(r["test_bpd"] for r in rs)
            row["wall_s"] = statistics.median(r["wall_s"] for r in rs)
        out.append(row)
    return out


def print_table(results: list[dict[str, Any]], experiments: list[str]) -> None:
    for exp in experiments:
        rows = summarize(results, exp)
        print(
            f"\n{exp}: test accuracy over {rows[0]['n'] if rows else 0} seeds (median [min, max]); calibrated NLL, ECE"
        )
        for r in rows:
            cal = f"{r['nll']:.3f}  {r['ece']:.3f}" if r["nll"] is not None else "    -      -  "
            extra = f"  bits/dim {r['bpd']:.3f}  wall {r['wall_s']:.0f} s" if "bpd" in r else ""
            print(f"  {r['method']:22s} {r['acc_median']:.3f} [{r['acc_min']:.3f}, {r['acc_max']:.3f}]  {cal}{extra}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--home", type=Path, required=True, help="FLOWGMM_HOME of the runs (data, MLflow, models)")
    p.add_argument("--json", type=Path, required=True, help="every run's figures (read first: done runs are kept)")
    a = p.parse_args(argv)
    results = json.loads(a.json.read_text()) if a.json.exists() else []
    done = {(r["experiment"], r["method"], r["seed"]) for r in results}
    for exp in a.experiments:
        for seed in a.seeds:
            for method in METHODS:
                if (exp, method, seed) in done:
                    continue
                r = run_one(a.home, exp, method, seed)
                print(
                    f"{exp:14s} {method:13s} seed {seed}: acc {r['test_accuracy_calibrated']:.3f}  "
                    f"({r['wall_s']:.0f} s)",
                    flush=True,
                )
                results.append(r)
                tmp = a.json.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(a.json)
    print_table(results, a.experiments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
