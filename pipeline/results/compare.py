"""Compare the SSL runs of an MLflow experiment: one row per method (FlowGMM, FlowGMM-cons, the labels-only
flow, logistic regression, kNN, label spreading) and label count, mean ± std over seeds/runs, printed and logged to
MLflow.

    python pipeline/compare.py --experiment flowgmm-digits
    python pipeline/compare.py --experiment flowgmm-digits --runs <id> <id>
    python pipeline/compare.py --recipe digits --seeds 2      # train FlowGMM and FlowGMM-cons, then compare

Every finished run contributes its own method's row and its baselines (a run of `pipeline/run.py` also trains the
same flow on the labels only and fits the classical anchors on the same split); a baseline is counted once per data
split and seed however many runs re-emit it. Sweep children count like single runs. The comparison is logged as a
run named ``comparison`` in the same experiment (table as CSV/Markdown/JSON and a picture of accuracy against
calibrated NLL).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.config.methods import ANCHORS, LABELS_ONLY, METHODS, method_name

COLUMNS = ("accuracy", "nll", "nll_calibrated", "ece", "ece_calibrated", "ood_auroc", "bpd", "wall_seconds")
ORDER = [*(m.display for m in METHODS.values()), *ANCHORS.values()]


def rows_from_run(run) -> list[dict[str, Any]]:
    """The comparison rows one MLflow run contributes: its method, then the baselines it ran on its split (the
    labels-only flow and the classical anchors), each tagged with the split so that it is counted once."""
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    if "test_accuracy" not in m:
        return []
    labels = _labels(p, m)
    split = (p.get("data.source"), p.get("data.seed", "0"), labels)
    base = {"run_id": run.info.run_id, "labels": labels, "seed": p.get("train.seed", "0"), "split": split}
    method = p.get("train.method", tags.get("method", "flowgmm"))
    aurocs = [v for k, v in m.items() if k.startswith("ood_") and k.endswith("_log_px_auroc")]
    own = {**_flow_row(base, m, "test_"), "method": method_name(method)}
    own.update(ood_auroc=float(np.mean(aurocs)) if aurocs else None, wall_seconds=m.get("wall_seconds"))
    rows = [own]
    if f"{LABELS_ONLY.key}_test_accuracy" in m:
        rows.append({**_flow_row(base, m, f"{LABELS_ONLY.key}_test_"), "method": LABELS_ONLY.display})
    for key, name in ANCHORS.items():
        if f"baseline_{key}_test_accuracy" in m:
            blank = {c: None for c in COLUMNS if c != "accuracy"}
            rows.append({**base, **blank, "method": name, "accuracy": m[f"baseline_{key}_test_accuracy"]})
    return rows


def _flow_row(base: dict[str, Any], m: dict[str, float], prefix: str) -> dict[str, Any]:
    cols = ("accuracy", "nll", "nll_calibrated", "ece", "ece_calibrated", "bpd")
    return {**base, "ood_auroc": None, "wall_seconds": None, **{c: m.get(prefix + c) for c in cols}}


def once_per_split(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A baseline that several runs re-emit on the same data split and seed (FlowGMM and FlowGMM-cons runs of one
    split both train the labels-only flow and fit the anchors) is counted once; the methods' own rows all count."""
    seen, out = set(), []
    for r in rows:
        if r["method"] not in ORDER[:2]:
            key = (r["method"], r.get("split"), r["seed"])
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


def _labels(params: dict[str, str], metrics: dict[str, float]) -> int | None:
    """The run's labeled training rows: data.n_labeled, else (sized from the labels: "None") the evaluated count."""
    try:
        return int(float(params["data.n_labeled"]))
    except (KeyError, ValueError):
        return int(metrics["labeled_rows"]) if "labeled_rows" in metrics else None


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group by (method, labels): mean and std (ddof=0) of every column over runs; n = number of runs."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in once_per_split(rows):
        groups[(r["method"], r["labels"])].append(r)
    order = ORDER
    out = []
    for (method, labels), rs in sorted(
        groups.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 99, kv[0][1] or 0)
    ):
        row: dict[str, Any] = {
            "method": method,
            "labels": labels,
            "n": len(rs),
            "seeds": sorted({str(r["seed"]) for r in rs}),
        }
        for c in COLUMNS:
            vals = [r[c] for r in rs if r.get(c) is not None and math.isfinite(r[c])]
            row[c] = float(np.mean(vals)) if vals else None
            row[c + "_std"] = float(np.std(vals)) if vals else None
        out.append(row)
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    head = "| method | labels | runs | accuracy | NLL | NLL (cal.) | ECE | ECE (cal.) | OOD AUROC | bits/dim | wall s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table:
        cells = [r["method"], str(r["labels"]), str(r["n"])]
        for c in COLUMNS:
            v, s = r[c], r[c + "_std"]
            cells.append("" if v is None else (f"{v:.4f} ± {s:.4f}" if r["n"] > 1 else f"{v:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def picture(table: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in table:
        if r["nll_calibrated"] is None:
            ax.axvline(r["accuracy"], ls=":", color="gray")
            ax.text(
                r["accuracy"], ax.get_ylim()[1] if ax.has_data() else 1, r["method"], rotation=90, fontsize=7, va="top"
            )
            continue
        ax.errorbar(
            r["accuracy"],
            r["nll_calibrated"],
            xerr=r["accuracy_std"],
            yerr=r["nll_calibrated_std"],
            fmt="o",
            capsize=3,
            label=f"{r['method']} ({r['labels']} labels)",
        )
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("test NLL after calibration")
    ax.set_title("accuracy vs calibrated NLL")
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def compare(
    tracking_uri: str, experiment: str, run_ids: list[str] | None = None, log: bool = True
) -> list[dict[str, Any]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no MLflow experiment named {experiment!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=10000)
    if run_ids:
        runs = [r for r in runs if r.info.run_id in set(run_ids)]
    rows = [row for r in runs if r.data.tags.get("mlflow.runName") != "comparison" for row in rows_from_run(r)]
    table = aggregate(rows)
    print(markdown(table), end="")
    if log and table:
        from pipeline.results.tracking import RunHandle

        run = client.create_run(exp.experiment_id, run_name="comparison", tags={"kind": "comparison"})
        h = RunHandle(tracking_uri, exp.experiment_id, run.info.run_id)
        h.log_text(markdown(table), "comparison/table.md")
        h.log_json({"rows": rows, "table": table}, "comparison/table.json")
        import csv

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
        h.log_text(buf.getvalue(), "comparison/table.csv")
        h.log_bytes(picture(table), "comparison/accuracy_vs_nll.png")
        h.end("FINISHED")
    return table
