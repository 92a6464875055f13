"""Out-of-domain detection by score (``flowgmm.ood``): image models in both directions, and the untuned suite's tables.

    python bench/untuned_suite.py --seeds 0 -o eval.ood_heldout=true -o eval.ood_background=true \
        -o eval.baselines=false --home /tmp/suite-ood --json /tmp/suite-ood/suite.json
    python bench/bench_ood.py --home /tmp/ood --background --suite-json /tmp/suite-ood/suite.json
    python bench/bench_ood.py --home /tmp/ood --steps 300 --models mnist  # a quick look

Image models: the ``mnist_cpu`` recipe (the vector flow over the 784 pixels, FlowGMM-cons, 1k labels, seed 0) trained
on MNIST (out of domain: FashionMNIST, notMNIST) and on FashionMNIST (out of domain: MNIST, notMNIST), ``--steps``
steps, no baselines; each a product job (``pipeline/run.py``) in its own process, its figures read back from its
MLflow run; ``--background`` adds the likelihood ratio against a background model (``eval.ood_background``). Tables
(``--suite-json``, the runs of ``bench/untuned_suite.py``): the evaluation scores each run's test rows against the same
rows shifted (``flowgmm.ood.shifted_rows``: deviations tripled, columns permuted) and, where the runs had
``eval.ood_heldout=true``, a model trained without one class against that class's test rows; medians over seeds. For
every model and OOD set it prints the AUROC and the false-positive rate at 95% true-positive rate of each score
(in-domain = the test split), then, per data kind, the score with the highest median AUROC, and the median held-out
class AUROC over the table cases.
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
from flowgmm.ood import RATIO, SCORES  # noqa: E402

MODELS = {
    "mnist": ["--config", "mnist_cpu"],
    "fashion_mnist": ["--config", "mnist_cpu", "data.source=fashion_mnist", "data.ood=mnist,notmnist"],
}
SCORE_NAMES = {
    "log_px": "log p(x)",
    "latent": "latent",
    "complexity": "complexity",
    "max_prob": "max prob",
    RATIO: "likelihood ratio",
}
ALL = (*SCORES, RATIO)  # the likelihood ratio: runs with eval.ood_background=true
SET_NAMES = {"heldout": "held-out class"}  # the metric's set name -> the table's


def run_model(home: Path, model: str, steps: int, background: bool) -> dict[str, Any]:
    """One image job; its OOD figures ``{(ood_set, score): {"auroc", "fpr95"}}`` and test accuracy."""
    name = f"ood-{model}-{steps}" + ("-background" if background else "")
    cmd = [sys.executable, str(ROOT / "pipeline" / "run.py"), "--run-name", name, *MODELS[model]]
    cmd += [f"train.steps={steps}", "eval.baselines=false", "eval.figures=false"]
    cmd += ["eval.ood_background=true"] if background else []
    t0 = time.time()
    proc = subprocess.run(cmd, env={**os.environ, "FLOWGMM_HOME": str(home)}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    m = _metrics(home, name)
    return {"model": model, "steps": steps, "wall_s": time.time() - t0, "command": " ".join(cmd[1:]), **m}


def _metrics(home: Path, run_name: str) -> dict[str, float]:
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    run = client.search_runs(ids, filter_string=f"attributes.run_name = '{run_name}'")[0]
    keep = ("test_accuracy_calibrated", "train_seconds", "time_ood_models_s")
    return {k: v for k, v in run.data.metrics.items() if k.startswith("ood_") or k in keep}


def figures(m: dict[str, float], ood_set: str) -> dict[str, tuple[float, float]]:
    """score -> (AUROC, FPR95) for one OOD set of one run's metrics."""
    out = {}
    for score in ALL:
        key = f"ood_{ood_set}_{score}"
        if f"{key}_auroc" in m:
            out[score] = (m[f"{key}_auroc"], m[f"{key}_fpr95"])
    return out


def ood_sets(m: dict[str, float]) -> list[str]:
    return sorted({k[len("ood_") : -len("_log_px_auroc")] for k in m if k.endswith("_log_px_auroc")})


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per suite case and OOD set (shifted rows; the held-out class where the runs had eval.ood_heldout), the median
    over seeds of each score's AUROC and FPR95."""
    rows = []
    for case in dict.fromkeys(r["case"] for r in runs):
        rs = [r for r in runs if r["case"] == case]
        for ood_set in ood_sets(rs[0]):
            per = [figures(r, ood_set) for r in rs]
            med = {s: tuple(statistics.median(p[s][i] for p in per) for i in (0, 1)) for s in per[0]}
            name = SET_NAMES.get(ood_set, ood_set)
            rows.append({"kind": "table", "model": case, "ood_set": name, "seeds": len(rs), "scores": med})
    return rows


def best_scores(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per data kind, the score with the highest median AUROC over its rows."""
    out = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        rs = [r for r in rows if r["kind"] == kind]
        common = set.intersection(*(set(r["scores"]) for r in rs))
        out[kind] = max(sorted(common), key=lambda s: statistics.median(r["scores"][s][0] for r in rs))
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| model | OOD set | " + " | ".join(f"{SCORE_NAMES[s]} AUROC / FPR95" for s in ALL) + " |\n"
    head += "|---|---|" + "---|" * len(ALL) + "\n"
    lines = []
    for r in rows:
        cells = [f"{r['scores'][s][0]:.3f} / {r['scores'][s][1]:.3f}" if s in r["scores"] else "-" for s in ALL]
        what = f"{r['model']} ({r['seeds']} seeds)" if r["kind"] == "table" else f"{r['model']} model"
        lines.append(f"| {what} | {r['ood_set']} | " + " | ".join(cells) + " |")
    best = best_scores(rows) if rows else {}
    tail = [f"- highest median AUROC, {kind}: {SCORE_NAMES[s]}" for kind, s in best.items()]
    held = [r for r in rows if r["ood_set"] == SET_NAMES["heldout"]]
    for s in ALL:
        if held and all(s in r["scores"] for r in held):
            med = statistics.median(r["scores"][s][0] for r in held)
            tail.append(f"- held-out class, median AUROC over {len(held)} cases, {SCORE_NAMES[s]}: {med:.3f}")
    return head + "\n".join(lines) + "\n\n" + "\n".join(tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--home", type=Path, required=True, help="FLOWGMM_HOME of the image jobs")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), help="image models to train")
    p.add_argument("--steps", type=int, default=1500, help="training steps of each image model (mnist_cpu: 3000)")
    p.add_argument("--background", action="store_true", help="image models with eval.ood_background=true")
    p.add_argument("--suite-json", type=Path, default=None, help="runs of bench/untuned_suite.py (its --json)")
    add_dry_run(p)
    a = p.parse_args(argv)
    if a.suite_json is not None and not a.dry_run and not a.suite_json.is_file():  # another bench's output
        p.error(f"--suite-json: {a.suite_json} is not a file")
    extra = ["eval.ood_background=true"] if a.background else []
    exit_if_dry_run(a, ["mnist_cpu"], [f"train.steps={a.steps}", *extra])
    rows, runs = [], []
    for model in a.models:
        r = run_model(a.home, model, a.steps, a.background)
        runs.append(r)
        print(f"{model:14s} {a.steps} steps: test accuracy {r['test_accuracy_calibrated']:.3f}, {r['wall_s']:.0f} s")
        if a.background:
            print(f"  background model {r['time_ood_models_s']:.0f} s beside training {r['train_seconds']:.0f} s")
        for ood_set in ood_sets(r):
            rows.append(
                {"kind": "image", "model": model, "ood_set": ood_set, "seeds": 1, "scores": figures(r, ood_set)}
            )
    if a.suite_json is not None:
        rows += table_rows(json.loads(a.suite_json.read_text()))
    write_result("bench_ood", {"rows": rows, "image_runs": runs, "best": best_scores(rows)}, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
