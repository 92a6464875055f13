"""The untuned suite: data no recipe was chosen on, run through the product with its defaults only.

Each case is made by this script (seeded): generated tables at three sizes and several shapes (classes, clusters per
class, informative vs noise features, class imbalance), scikit-learn's bundled ``wine`` and ``iris`` as CSV files
with text labels, and digits with 50 and 200 labels. A table case is a CSV whose ``label`` column is empty on the
unlabeled rows (``python pipeline/run.py --table FILE``, as a user runs it), plus its own labeled test table where
the case has one (``data.test_path``); digits runs ``--config digits data.n_labeled=N``. Nothing else is set: the
training budget, the flow and the calibration are the product's defaults for that data.

For every case and seed (``data.seed = train.seed = s``; the generated tables are drawn afresh per seed) it runs the
job once in a fresh process (FlowGMM-cons, the default, with every baseline on the same split) and reads the run's
metrics back from its MLflow store. It prints one table: per case, FlowGMM-cons, the labels-only flow and each anchor
(test accuracy, median over seeds), the paired difference to the best anchor (median over seeds of FlowGMM-cons minus
the best anchor of that seed's split), calibrated vs uncalibrated NLL and ECE, the steps taken, the wall time, and
the AUROC of log p(x) against the test rows shifted by the evaluation (tables: ``flowgmm.ood.shifted_rows``);
and writes every run's figures to ``--json`` (runs already there are not repeated, so an interrupted suite resumes).

    python bench/untuned_suite.py --home /tmp/untuned --json bench/results/untuned_suite.json
    python bench/untuned_suite.py --cases wine iris --seeds 0 --home /tmp/u --json /tmp/u/u.json  # a quick look
    python bench/untuned_suite.py --set dev --home /tmp/dev --json /tmp/dev/dev.json  # the development cases

``--set dev`` runs other cases (other generators' settings and seeds, breast cancer, moons): the ones the
defaults were developed on. The suite's cases are never used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402

ANCHOR_KEYS = ("logreg", "knn", "label_spreading", "self_training")


@dataclass(frozen=True)
class Table:
    """A generated table: ``make_classification`` settings, the rows in the training file, the labels kept."""

    rows: int
    features: int
    informative: int
    classes: int
    clusters: int
    labels: int
    test_rows: int = 20_000
    weights: tuple[float, ...] | None = None  # class shares (imbalance); None: balanced
    class_sep: float = 1.0


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # one line for the table's legend
    table: Table | None = None
    bundled: str | None = None  # scikit-learn's bundled set written as a CSV with text labels
    label_share: float = 0.3  # bundled sets: share of rows with their label kept
    config: str | None = None  # a shipped experiment instead of a table (digits)
    overrides: tuple[str, ...] = field(default_factory=tuple)


SUITE = (
    Case("gen-2k", "2k rows, 10 features (5 informative), 3 classes, 60 labels", Table(2_000, 10, 5, 3, 1, 60, 5_000)),
    Case(
        "gen-30k",
        "30k rows, 24 features (12 informative), 5 classes x 2 clusters, 500 labels",
        Table(30_000, 24, 12, 5, 2, 500),
    ),
    Case(
        "gen-300k",
        "300k rows, 24 features (12 informative), 5 classes x 2 clusters, 1,000 labels",
        Table(300_000, 24, 12, 5, 2, 1_000),
    ),
    Case(
        "gen-imbalanced",
        "30k rows, 16 features (8 informative), 4 classes with shares 55/25/15/5%, 400 labels",
        Table(30_000, 16, 8, 4, 1, 400, weights=(0.55, 0.25, 0.15, 0.05)),
    ),
    Case(
        "gen-noisy",
        "30k rows, 40 features (8 informative, 32 noise), 3 classes x 3 clusters, 300 labels",
        Table(30_000, 40, 8, 3, 3, 300),
    ),
    Case(
        "wine",
        "scikit-learn wine: 178 rows (124 in the file, 54 test), 13 features, 3 text classes, 30% of labels kept",
        bundled="wine",
    ),
    Case(
        "iris",
        "scikit-learn iris: 150 rows (105 in the file, 45 test), 4 features, 3 text classes, 30% of labels kept",
        bundled="iris",
    ),
    Case("digits-50", "digits (8x8, 17 grey levels) with 50 labels", config="digits", overrides=("data.n_labeled=50",)),
    Case(
        "digits-200", "digits (8x8, 17 grey levels) with 200 labels", config="digits", overrides=("data.n_labeled=200",)
    ),
)

DEV = (
    Case(
        "dev-150",
        "150 rows, 10 features (6 informative), 3 classes, 30 labels",
        Table(150, 10, 6, 3, 1, 30, 5_000, class_sep=1.5),
    ),
    Case(
        "dev-300",
        "300 rows, 6 features (4 informative), 2 classes x 2 clusters, 24 labels",
        Table(300, 6, 4, 2, 2, 24, 5_000),
    ),
    Case(
        "dev-800",
        "800 rows, 8 features (5 informative), 3 classes, 40 labels",
        Table(800, 8, 5, 3, 1, 40, 5_000, class_sep=0.9),
    ),
    Case(
        "dev-5k",
        "5k rows, 12 features (6 informative), 4 classes, 100 labels",
        Table(5_000, 12, 6, 4, 1, 100, 5_000, class_sep=0.8),
    ),
    Case(
        "dev-60k",
        "60k rows, 20 features (10 informative), 6 classes x 2 clusters, 600 labels",
        Table(60_000, 20, 10, 6, 2, 600),
    ),
    Case(
        "dev-200k",
        "200k rows, 16 features (8 informative), 4 classes x 2 clusters, 800 labels",
        Table(200_000, 16, 8, 4, 2, 800),
    ),
    Case(
        "breast-cancer",
        "scikit-learn breast cancer: 569 rows (398 in the file, 171 test), 30 features, 2 classes, 10% of labels kept",
        bundled="breast_cancer",
        label_share=0.1,
    ),
    Case("dev-moons", "moons (2-D, 10 labels): the shipped experiment", config="moons"),
)
SETS = {"suite": SUITE, "dev": DEV}


# --------------------------------------------------------------------------------------------------- the data
def _generated(t: Table, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    noise = t.features - t.informative
    x, y = make_classification(
        n_samples=t.rows + t.test_rows,
        n_features=t.features,
        n_informative=t.informative,
        n_redundant=min(noise, t.informative // 2),
        n_classes=t.classes,
        n_clusters_per_class=t.clusters,
        weights=list(t.weights) if t.weights else None,
        class_sep=t.class_sep,
        flip_y=0.0,
        random_state=seed,
    )
    return x[: t.rows], y[: t.rows], x[t.rows :], y[t.rows :]


def _bundled(name: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from sklearn import datasets

    d = getattr(datasets, f"load_{name}")()
    return d.data, d.target, [str(c) for c in d.target_names], [str(f) for f in d.feature_names]


def _keep_labels(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A mask of ``n`` rows whose label is kept: at least 3 per class (the product's minimum), the rest at random."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for k in np.unique(y):
        keep[rng.choice(np.flatnonzero(y == k), 3, replace=False)] = True
    rest = np.flatnonzero(~keep)
    keep[rng.choice(rest, max(0, n - int(keep.sum())), replace=False)] = True
    return keep


def _write_csv(path: Path, x: np.ndarray, labels: list[str], columns: list[str]) -> None:
    import pandas as pd

    df = pd.DataFrame(x.astype(np.float32), columns=columns)
    df["label"] = pd.Series(labels, dtype="string").replace("", pd.NA)
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def make_files(case: Case, seed: int, data_dir: Path) -> list[str]:
    """Write the case's CSV files for ``seed`` (kept: the same files serve a rerun); the job's arguments."""
    data_dir.mkdir(parents=True, exist_ok=True)
    train, test = data_dir / f"{case.name}-s{seed}.csv", data_dir / f"{case.name}-s{seed}-test.csv"
    if case.table is not None:
        t = case.table
        if not train.exists() or not test.exists():
            x, y, xt, yt = _generated(t, seed)
            names = [f"class_{k}" for k in range(t.classes)]
            cols = [f"f{i}" for i in range(t.features)]
            keep = _keep_labels(y, t.labels, seed)
            _write_csv(train, x, [names[k] if kept else "" for k, kept in zip(y, keep)], cols)
            _write_csv(test, xt, [names[k] for k in yt], cols)
        return ["--table", str(train), f"data.test_path={test}"]
    if not train.exists() or not test.exists():  # 30% of the rows (per class) held out as the labeled test table
        x, y, names, cols = _bundled(case.bundled)
        rng = np.random.default_rng(seed)
        held = np.zeros(len(y), bool)
        for k in np.unique(y):
            rows = np.flatnonzero(y == k)
            held[rng.choice(rows, int(round(0.3 * len(rows))), replace=False)] = True
        xs, ys = x[~held], y[~held]
        keep = _keep_labels(ys, int(round(case.label_share * len(ys))), seed)
        _write_csv(train, xs, [names[k] if kept else "" for k, kept in zip(ys, keep)], cols)
        _write_csv(test, x[held], [names[k] for k in y[held]], cols)
    return ["--table", str(train), f"data.test_path={test}"]


# --------------------------------------------------------------------------------------------------- the runs
KEEP = (
    "test_accuracy",
    "test_accuracy_calibrated",
    "test_nll",
    "test_nll_calibrated",
    "test_ece",
    "test_ece_calibrated",
    "labels_only_flow_test_accuracy_calibrated",
    "train_steps",
    "train_seconds",
    "variance_scale",
    "test_rows",
    "val_rows",
    "labeled_rows",
    *(f"baseline_{k}_test_accuracy" for k in ANCHOR_KEYS),
    *(f"baseline_{k}_val_accuracy" for k in ANCHOR_KEYS),
)


def run_one(home: Path, case: Case, seed: int, variant: tuple[str, ...] = ()) -> dict[str, Any]:
    """One product job in its own process, defaults only (``variant``: overrides, for the dev cases); its metrics
    from the MLflow store and the wall time."""
    tag = variant_tag(variant)
    name = f"{case.name}-s{seed}" + (f"-{tag}" if tag else "")
    args = ["--config", case.config, *case.overrides] if case.config else make_files(case, seed, home / "suite_data")
    cmd = [sys.executable, str(ROOT / "pipeline" / "run.py"), "--run-name", name, *args]
    cmd += [f"data.seed={seed}", f"train.seed={seed}", *variant]
    env = {**os.environ, "FLOWGMM_HOME": str(home)}
    t0 = time.time()
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        peak = MemoryPeak(proc.pid)
        stdout, stderr = proc.communicate()
        peak.stop()
    proc.stdout, proc.stderr = stdout, stderr
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = {"case": case.name, "seed": seed, "variant": tag, "wall_s": wall, "command": " ".join(cmd[1:])}
    out.update(peak_driver_mib=peak.driver / 2**20, peak_tree_mib=peak.tree / 2**20)
    return {**out, **metrics_of(home, name)}


class MemoryPeak:
    """Peak memory of a job, sampled every half second from /proc (Linux): the proportional set size (PSS: shared
    pages such as Ray's object store and the libraries divided among the processes that map them, so that the sum
    over processes is the memory the job holds) of its driver process (where the in-driver training runs) and of its
    whole process tree (Ray's daemons and workers included)."""

    def __init__(self, pid: int, every: float = 0.5):
        import threading

        self.pid, self.every, self.driver, self.tree = pid, every, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.every):
            rss = _tree_rss(self.pid)
            if rss:
                self.driver, self.tree = max(self.driver, rss[self.pid]), max(self.tree, sum(rss.values()))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _tree_rss(root: int) -> dict[int, int]:
    """Proportional set size in bytes of ``root`` and its descendants ({} once it is gone)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    out = {}
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            kib = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        except (OSError, IndexError, ValueError, StopIteration):
            continue
        out[pid] = kib * 1024
    return out if root in out else {}


def variant_tag(variant: tuple[str, ...]) -> str:
    return ",".join(v.split(".", 1)[-1] for v in variant)


def metrics_of(home: Path, run_name: str) -> dict[str, float]:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"attributes.run_name = '{run_name}'")
    m, params = runs[0].data.metrics, runs[0].data.params
    out = {k: m[k] for k in KEEP if k in m}
    out.update({k: v for k, v in m.items() if k.startswith("ood_") and k.endswith(("_auroc", "_fpr95"))})
    out.update({k: float(params[k]) for k in ("test_rows", "val_rows", "labeled_rows") if k in params})
    return out


# --------------------------------------------------------------------------------------------------- the table
def best_anchor_by_test(r: dict[str, Any]) -> float:
    """The strongest anchor in hindsight (the best test accuracy): the sceptical reader's comparison (NaN: no
    anchors in this run)."""
    accs = [r[f"baseline_{k}_test_accuracy"] for k in ANCHOR_KEYS if f"baseline_{k}_test_accuracy" in r]
    return max(accs) if accs else float("nan")


def summarize(results: list[dict[str, Any]], case: Case) -> dict[str, Any] | None:
    rs = [r for r in results if r["case"] == case.name]
    if not rs:
        return None
    med: Callable[[str], float | None] = lambda k: (
        statistics.median(r[k] for r in rs) if all(k in r for r in rs) else None
    )  # noqa: E731
    row: dict[str, Any] = {"case": case.name, "seeds": len(rs), "flowgmm_cons": med("test_accuracy_calibrated")}
    row["labels_only"] = med("labels_only_flow_test_accuracy_calibrated")
    for k in ANCHOR_KEYS:
        row[k] = med(f"baseline_{k}_test_accuracy")
    row["diff_best_anchor"] = statistics.median(r["test_accuracy_calibrated"] - best_anchor_by_test(r) for r in rs)
    if row["labels_only"] is not None:
        row["diff_labels_only"] = statistics.median(
            r["test_accuracy_calibrated"] - r["labels_only_flow_test_accuracy_calibrated"] for r in rs
        )
    for k in ("test_nll", "test_nll_calibrated", "test_ece", "test_ece_calibrated", "train_steps", "wall_s"):
        row[k] = med(k)
    for k in ("train_seconds", "peak_tree_mib"):  # the slowest seed, the largest footprint
        row[k] = max(r[k] for r in rs) if all(k in r for r in rs) else None
    row["nll_worse"] = max(r["test_nll_calibrated"] - r["test_nll"] for r in rs)
    for shift in OOD_SHIFTS:  # log p(x) against the test rows shifted by the evaluation (tables only)
        row[f"ood_{shift}_auroc"] = med(f"ood_{shift}_log_px_auroc")
    return row


OOD_SHIFTS = ("scaled", "permuted")  # flowgmm.ood.shifted_rows


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | FlowGMM-cons | labels-only flow | logistic regression | kNN | label spreading | self-training | "
        "vs best anchor | vs labels-only | NLL uncal. -> cal. | ECE uncal. -> cal. | steps | wall s | train s (max) | "
        "peak GiB (max) | OOD AUROC scaled / permuted |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        accs = [r[k] for k in ("flowgmm_cons", "labels_only", *ANCHOR_KEYS)]
        vs_lab = None if r.get("diff_labels_only") is None else 100 * r["diff_labels_only"]
        cells = [
            f"{r['case']} ({r['seeds']})",
            *(_f(v) for v in accs),
            f"{100 * r['diff_best_anchor']:+.1f}",
            _f(vs_lab, "+.1f"),
            f"{_f(r['test_nll'])} -> {_f(r['test_nll_calibrated'])}",
            f"{_f(r['test_ece'])} -> {_f(r['test_ece_calibrated'])}",
            _f(r["train_steps"], ".0f"),
            _f(r["wall_s"], ".0f"),
            _f(r["train_seconds"], ".0f"),
            _f(None if r["peak_tree_mib"] is None else r["peak_tree_mib"] / 1024, ".2f"),
            " / ".join(_f(r.get(f"ood_{s}_auroc")) for s in OOD_SHIFTS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=sorted(SETS), default="suite", help="the suite (default) or the dev cases")
    p.add_argument("--cases", nargs="+", default=None, help="a subset of the set's cases, by name")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--home", type=Path, required=True, help="FLOWGMM_HOME of the runs (data, MLflow, models)")
    p.add_argument("--json", type=Path, required=True, help="every run's figures (read first: done runs are kept)")
    p.add_argument(
        "-o", "--override", dest="variant", action="append", default=[], metavar="KEY=VALUE",
        help="an override of the defaults (repeat for a variant of several); the suite takes eval.* ones only",
    )  # fmt: skip
    add_dry_run(p)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.set == "suite" and any(not v.startswith("eval.") for v in a.variant):
        raise SystemExit(
            "error: the suite trains with the defaults only; its variants may change what the evaluation measures "
            "(eval.*), other overrides are for --set dev"
        )
    exit_if_dry_run(a, [c.config for c in SETS[a.set] if c.config], a.variant)
    cases = [c for c in SETS[a.set] if a.cases is None or c.name in a.cases]
    results = json.loads(a.json.read_text()) if a.json.exists() else []
    tag = variant_tag(tuple(a.variant))
    done = {(r["case"], r["seed"], r.get("variant", "")) for r in results}
    for case in cases:
        for seed in a.seeds:
            if (case.name, seed, tag) in done:
                continue
            r = run_one(a.home, case, seed, tuple(a.variant))
            print(
                f"{case.name:15s} seed {seed}: FlowGMM-cons {r.get('test_accuracy_calibrated', float('nan')):.3f}, "
                f"best anchor {best_anchor_by_test(r):.3f}, {r.get('train_steps', 0):.0f} steps, {r['wall_s']:.0f} s",
                flush=True,
            )
            results.append(r)
            a.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = a.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(a.json)
    results = [r for r in results if r.get("variant", "") == tag]
    rows = [row for c in cases if (row := summarize(results, c)) is not None]
    legend = "\n".join(f"- {c.name}: {c.what}" for c in cases)
    name = f"untuned_{a.set}" + (f"_{'-'.join(a.cases)}" if a.cases else "") + (f"_{tag}" if tag else "")
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in name)
    write_result(name, {"rows": rows, "runs": str(a.json)}, markdown(rows) + "\n" + legend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
