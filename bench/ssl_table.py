"""The semi-supervised results table: every CPU experiment x 5 seeds, through the product's own job.

For each experiment and seed (data split and initialisation: ``data.seed = train.seed = s``) it runs
``pipeline/run.py`` twice in a fresh process: FlowGMM (with every baseline on the same split: the labels-only flow,
logistic regression, kNN, label spreading) and FlowGMM-cons (``eval.baselines=false``: the baselines are counted once
per split and seed). Each run's metrics are read back from its MLflow store. It prints accuracy (median and
min-max), calibrated NLL and ECE, bits/dim and wall time per method, the paired medians over seeds (per-seed
differences of test accuracy), the share of class-conditional samples labeled as their class, and the total job wall
time (the block of bench/RESULTS.md; figures in ``bench/results/ssl_table.json``); ``--json`` keeps every run.

    python bench/ssl_table.py --home /tmp/ssl --json /tmp/ssl/ssl_table.json          # 30 jobs, one after another
    python bench/ssl_table.py --experiments moons --seeds 0 1 --home /tmp/ssl-quick --json /tmp/ssl-quick/t.json
    python bench/ssl_table.py --home /tmp/ssl-best --json /tmp/ssl-best/t.json eval.checkpoint=best

Runs already in ``--json`` are not repeated (so an interrupted table resumes); the table covers the runs of the
experiments and seeds asked for.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from pipeline.config.methods import ANCHORS, FLOWGMM, FLOWGMM_CONS, LABELS_ONLY  # noqa: E402
from pipeline.core.atomic import atomic_write_text  # noqa: E402

EXPERIMENTS = ("digits", "moons", "breast_cancer")
METHODS = {m.display: m.value for m in (FLOWGMM, FLOWGMM_CONS)}
ONLY = LABELS_ONLY.key  # the labels-only flow's metric prefix
ANCHOR_KEYS = {name: f"baseline_{key}_test_accuracy" for key, name in ANCHORS.items()}
CAL = ("test_accuracy_calibrated", "test_nll_calibrated", "test_ece_calibrated")
KEEP = (
    *CAL,
    "test_nll",
    "test_ece",
    "test_bpd",
    "sample_class_share",
    *(f"{ONLY}_{k}" for k in CAL),
    *ANCHOR_KEYS.values(),
    "time_train_s",
    "time_baseline_s",
)
# rows of the table: (label, metric for accuracy, for calibrated NLL, for calibrated ECE, from which method's runs)
ROWS = (
    (FLOWGMM.display, *CAL, FLOWGMM.display),
    (FLOWGMM_CONS.display, *CAL, FLOWGMM_CONS.display),
    (LABELS_ONLY.display, *(f"{ONLY}_{k}" for k in CAL), FLOWGMM.display),
    *((name, key, None, None, FLOWGMM.display) for name, key in ANCHOR_KEYS.items()),
)


def run_one(home: Path, experiment: str, method: str, seed: int, overrides: list[str]) -> dict[str, Any]:
    """One product job in its own process; its metrics from the MLflow store, plus the wall time."""
    name = f"{experiment}-{METHODS[method]}-s{seed}"
    cmd = [sys.executable, str(ROOT / "pipeline" / "run.py"), "--config", experiment, "--run-name", name, *overrides]
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


def paired(results: list[dict[str, Any]], experiment: str, a: tuple[str, str], b: tuple[str, str]) -> float | None:
    """Median over seeds of accuracy ``a`` - accuracy ``b``; each is (method whose run holds it, metric key)."""
    by = {(r["method"], r["seed"]): r for r in results if r["experiment"] == experiment}
    d = []
    for s in sorted({s for _, s in by}):
        x, y = by.get((a[0], s), {}), by.get((b[0], s), {})
        if a[1] in x and b[1] in y:
            d.append(x[a[1]] - y[b[1]])
    return statistics.median(d) if d else None


def paired_line(results: list[dict[str, Any]], experiment: str) -> tuple[str, dict[str, float]]:
    """Per-seed differences of test accuracy, median over seeds: each FlowGMM method against the labels-only flow
    and the anchors of the same split (held by the FlowGMM run of that seed), and FlowGMM-cons against FlowGMM."""
    fg, cons, acc = FLOWGMM.display, FLOWGMM_CONS.display, CAL[0]
    others = [(LABELS_ONLY.display, (fg, f"{ONLY}_{acc}")), *((n, (fg, k)) for n, k in ANCHOR_KEYS.items())]
    out, parts = {}, []
    for method in (cons, fg):
        said = []
        for name, other in others:
            v = paired(results, experiment, (method, acc), other)
            if v is not None:
                out[f"{method} - {name}"] = v
                said.append(f"- {name} {v:+.3f}")
        parts.append(f"{method} " + ", ".join(said))
    v = paired(results, experiment, (cons, acc), (fg, acc))
    if v is not None:
        out[f"{cons} - {fg}"] = v
        parts.append(f"{cons} - {fg} {v:+.3f}")
    return "Paired medians over seeds (test accuracy): " + "; ".join(parts), out


def experiment_block(results: list[dict[str, Any]], experiment: str) -> tuple[list[str], dict[str, Any]]:
    """The Markdown of one experiment (table, paired medians, sample share) and its figures."""
    rows = summarize(results, experiment)
    n = max((r["n"] for r in rows), default=0)
    lines = [f"**{experiment}** ({n} seeds)", ""]
    lines += ["| method | test accuracy median [min, max] | calibrated NLL | calibrated ECE | bits/dim | wall s |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in rows:
        cal = f"{r['nll']:.3f} | {r['ece']:.3f}" if r["nll"] is not None else " | "
        extra = f"{r['bpd']:.2f} | {r['wall_s']:.0f}" if "bpd" in r else " | "
        lines.append(
            f"| {r['method']} | {r['acc_median']:.3f} [{r['acc_min']:.3f}, {r['acc_max']:.3f}] | {cal} | {extra} |"
        )
    text, pairs = paired_line(results, experiment)
    lines += ["", text]
    figures: dict[str, Any] = {"table": rows, "paired_medians": pairs}
    for method in (FLOWGMM_CONS.display, FLOWGMM.display):
        runs = [r for r in results if r["experiment"] == experiment and r["method"] == method]
        share = [r["sample_class_share"] for r in runs if r.get("sample_class_share") is not None]
        if share:
            figures[f"sample_class_share {method}"] = share
            each = ", ".join(f"{v:.2f}" for v in share)
            lines.append(f"Sample share ({method}): median {statistics.median(share):.2f} [per seed {each}]")
    walls = [r["wall_s"] for r in results if r["experiment"] == experiment]
    figures["job_wall_s"] = {m: [r["wall_s"] for r in results if r["experiment"] == experiment and r["method"] == m]
                             for m in METHODS}  # fmt: skip
    lines.append(f"{len(walls)} jobs, {sum(walls):.0f} s of job wall time in all")
    return lines, figures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--home", type=Path, required=True, help="FLOWGMM_HOME of the runs (data, MLflow, models)")
    p.add_argument("--json", type=Path, required=True, help="every run's figures (read first: done runs are kept)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides for every run")
    add_dry_run(p)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    exit_if_dry_run(a, a.experiments, a.overrides)
    results = json.loads(a.json.read_text()) if a.json.exists() else []
    done = {(r["experiment"], r["method"], r["seed"]) for r in results}
    for exp in a.experiments:
        for seed in a.seeds:
            for method in METHODS:
                if (exp, method, seed) in done:
                    continue
                r = run_one(a.home, exp, method, seed, a.overrides)
                print(
                    f"{exp:14s} {method:13s} seed {seed}: acc {r['test_accuracy_calibrated']:.3f}  "
                    f"({r['wall_s']:.0f} s)",
                    flush=True,
                )
                results.append(r)
                atomic_write_text(a.json, json.dumps(results, indent=1))
    kept = [r for r in results if r["experiment"] in a.experiments and r["seed"] in a.seeds]
    blocks, figures = [], {"overrides": a.overrides, "experiments": {}}
    for exp in a.experiments:
        lines, figures["experiments"][exp] = experiment_block(kept, exp)
        blocks.append("\n".join(lines))
    total = sum(r["wall_s"] for r in kept)
    figures["total_job_wall_s"] = total
    blocks.append(f"All {len(kept)} jobs: {total:.0f} s ({total / 60:.0f} min) of job wall time, one after another.")
    write_result("ssl_table", figures, "\n\n".join(blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
