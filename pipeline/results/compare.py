"""Compare the SSL runs of an MLflow experiment: one row per method (FlowGMM, FlowGMM-cons, the labels-only flow,
logistic regression, kNN, label spreading), label count and recipe, mean ± std over seeds, printed and logged to
MLflow.

    python pipeline/compare.py --experiment flowgmm-digits
    python pipeline/compare.py --experiment flowgmm-digits --runs <id> <id>
    python pipeline/compare.py --recipe digits --seeds 2      # train FlowGMM and FlowGMM-cons, then compare

Runs whose recipes differ are never pooled: within a method, the configuration values that differ among its runs
(seeds aside, and where the data lives) name the row (``FlowGMM-cons · train.steps=300``), and an experiment that
holds runs on several data sets (content hashes) gets one table per data set. Every finished run contributes its own
method's row and its baselines (a run of `pipeline/run.py` also trains the same flow on the labels only and fits the
classical anchors on the same split); a baseline is counted once per data split and seed however many runs re-emit
it. Sweep children count like single runs. The comparison is logged as a run named ``comparison`` in the same
experiment (table as CSV/Markdown/JSON, a picture of accuracy against calibrated NLL, the runs it covers as a tag
and as links in its description).
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.config.methods import ANCHORS, LABELS_ONLY, METHODS, method_name

COLUMNS = ("accuracy", "nll", "nll_calibrated", "ece", "ece_calibrated", "ood_auroc", "bpd", "wall_seconds")
ORDER = [*(m.display for m in METHODS.values()), *ANCHORS.values()]
SECTIONS = ("data", "ingest", "model", "train", "eval")  # the configuration's params: ``<section>.<field>``
# settings that never change a result: the replicates' seeds, names, where the files live (their content is the data
# hash), failure handling, logging and pictures
NOT_RECIPE = frozenset(
    {
        "data.seed",
        "train.seed",
        "data.data_dir",
        "data.path",
        "data.test_path",
        "train.max_failures",
        "train.inject_failure_at_step",
        "train.log_every",
        "eval.figures",
        "data.n_labeled",  # the table's labels column
    }
)
ANCHOR_RECIPE = ("data.", "eval.anchor_unlabeled")  # the anchors see the split only


def rows_from_run(run) -> list[dict[str, Any]]:
    """The comparison rows one MLflow run contributes: its method, then the baselines it ran on its split (the
    labels-only flow and the classical anchors), each with its data, its recipe (the configuration values that
    shape it) and its replicate (the seeds), so that a baseline several runs re-emit is counted once."""
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    if "test_accuracy" not in m:
        return []
    recipe = {k: v for k, v in p.items() if k.split(".")[0] in SECTIONS and k not in NOT_RECIPE}
    recipe.pop("train.method", None)  # the row's name
    base = {
        "run_id": run.info.run_id,
        "labels": _labels(p, m),
        "seed": p.get("train.seed", "0"),
        "data": tags.get("data_hash") or _given(p, "data.path") or p.get("data.source", "?"),
        "data_name": os.path.basename(_given(p, "data.path") or "") or p.get("data.source", "?"),
        "recipe": recipe,
        "replicate": (p.get("data.seed", "0"), p.get("train.seed", "0")),
    }
    method = p.get("train.method", tags.get("method", "flowgmm"))
    aurocs = [v for k, v in m.items() if k.startswith("ood_") and k.endswith("_log_px_auroc")]
    own = {**_flow_row(base, m, "test_"), "method": method_name(method), "own": True}
    own.update(ood_auroc=float(np.mean(aurocs)) if aurocs else None, wall_seconds=m.get("wall_seconds"))
    rows = [own]
    if f"{LABELS_ONLY.key}_test_accuracy" in m:
        rows.append({**_flow_row(base, m, f"{LABELS_ONLY.key}_test_"), "method": LABELS_ONLY.display})
    anchor = {
        **base,
        "recipe": {k: v for k, v in recipe.items() if k.startswith(ANCHOR_RECIPE)},
        "replicate": base["replicate"][:1],
        **{c: None for c in COLUMNS if c != "accuracy"},
    }
    for key, name in ANCHORS.items():
        if f"baseline_{key}_test_accuracy" in m:
            rows.append({**anchor, "method": name, "accuracy": m[f"baseline_{key}_test_accuracy"]})
    return rows


def _given(params: dict[str, str], key: str) -> str | None:
    """A param's value, None when it was logged unset ("None")."""
    v = params.get(key)
    return None if v in (None, "", "None") else v


def _flow_row(base: dict[str, Any], m: dict[str, float], prefix: str) -> dict[str, Any]:
    cols = ("accuracy", "nll", "nll_calibrated", "ece", "ece_calibrated", "bpd")
    return {**base, "ood_auroc": None, "wall_seconds": None, **{c: m.get(prefix + c) for c in cols}}


def once_per_split(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A baseline that several runs re-emit on the same data, recipe and seeds (FlowGMM and FlowGMM-cons runs of
    one split both train the labels-only flow and fit the anchors) is counted once; the methods' own rows all
    count."""
    seen, out = set(), []
    for r in rows:
        if not r.get("own"):
            key = (r["method"], r["data"], r["labels"], tuple(sorted(r["recipe"].items())), r["replicate"])
            if key in seen:
                continue
            seen.add(key)
        out.append(r)
    return out


def _labels(params: dict[str, str], metrics: dict[str, float]) -> int | None:
    """The run's labeled training rows: data.n_labeled, else (sized from the labels: "None") the evaluated count
    (a param since row counts are settings, a metric in runs logged before)."""
    try:
        return int(float(params["data.n_labeled"]))
    except (KeyError, ValueError):
        rows = params.get("labeled_rows", metrics.get("labeled_rows"))
        return int(float(rows)) if rows is not None else None


def differing(rows: list[dict[str, Any]]) -> list[str]:
    """The recipe keys whose values differ among ``rows`` (a key some rows lack differs too)."""
    keys = sorted({k for r in rows for k in r["recipe"]})
    return [k for k in keys if len({r["recipe"].get(k) for r in rows}) > 1]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group by (data, method, labels, the recipe values that differ among that method's runs on that data): mean
    and std (ddof=0) of every column over the group's runs; n = number of runs."""
    by_method: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in once_per_split(rows):
        by_method[(r["data"], r["method"])].append(r)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for (data, method), rs in by_method.items():
        keys = differing(rs)
        for r in rs:
            groups[(data, method, r["labels"], tuple((k, r["recipe"].get(k)) for k in keys))].append(r)
    out = []
    for (data, method, labels, variant), rs in sorted(groups.items(), key=_group_order):
        row: dict[str, Any] = {
            "data": data,
            "data_name": rs[0]["data_name"],
            "method": method,
            "recipe": dict(variant),
            "labels": labels,
            "n": len(rs),
            "seeds": sorted({str(r["seed"]) for r in rs}),
            "run_ids": sorted({r["run_id"] for r in rs}),
        }
        for c in COLUMNS:
            vals = [r[c] for r in rs if r.get(c) is not None and math.isfinite(r[c])]
            row[c] = float(np.mean(vals)) if vals else None
            row[c + "_std"] = float(np.std(vals)) if vals else None
        out.append(row)
    return out


def _group_order(item) -> tuple:
    (data, method, labels, variant), _ = item
    return (str(data), ORDER.index(method) if method in ORDER else 99, labels or 0, str(variant))


def row_name(row: dict[str, Any]) -> str:
    """The method, and the recipe values that tell its rows apart: ``FlowGMM-cons · train.steps=300``."""
    recipe = ", ".join(f"{k}={v}" for k, v in row.get("recipe", {}).items())
    return f"{row['method']} · {recipe}" if recipe else row["method"]


def markdown(table: list[dict[str, Any]]) -> str:
    """One table per data set (content hash), each under a line naming it and its runs."""
    head = "| method | labels | runs | accuracy | NLL | NLL (cal.) | ECE | ECE (cal.) | OOD AUROC | bits/dim | wall s |"
    lines: list[str] = []
    for data in dict.fromkeys(r["data"] for r in table):
        rows = [r for r in table if r["data"] == data]
        runs = len({i for r in rows for i in r["run_ids"]})
        lines += [""] if lines else []
        lines += [f"data {data} ({rows[0]['data_name']}) · {runs} run{'s' * (runs != 1)}"]
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in rows:
            cells = [row_name(r), str(r["labels"]), str(r["n"])]
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
    several = len({r["data"] for r in table}) > 1
    for r in table:
        name = row_name(r) + (f" [{r['data']}]" if several else "")
        if r["nll_calibrated"] is None:
            ax.axvline(r["accuracy"], ls=":", color="gray")
            ax.text(r["accuracy"], ax.get_ylim()[1] if ax.has_data() else 1, name, rotation=90, fontsize=7, va="top")
            continue
        ax.errorbar(
            r["accuracy"],
            r["nll_calibrated"],
            xerr=r["accuracy_std"],
            yerr=r["nll_calibrated_std"],
            fmt="o",
            capsize=3,
            label=f"{name} ({r['labels']} labels)",
        )
    ax.set_xlabel("test accuracy")
    ax.set_ylabel("test NLL after calibration")
    ax.set_title("accuracy vs calibrated NLL")
    if ax.get_legend_handles_labels()[0]:  # only the anchors (no NLL): no legend
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def compare(
    tracking_uri: str, experiment: str, run_ids: list[str] | None = None, log: bool = True
) -> list[dict[str, Any]]:
    """Print the comparison of ``experiment``'s finished runs (or of ``run_ids`` among them) and, with ``log``,
    record it as a ``comparison`` run; the table's rows."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        have = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise SystemExit(
            f"error: no MLflow experiment named {experiment!r} at {tracking_uri} (have: {', '.join(have) or 'none'})"
        )
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=10000)
    runs = [r for r in runs if r.data.tags.get("kind") != "comparison" and r.info.run_name != "comparison"]
    if run_ids:
        runs = [r for r in runs if r.info.run_id in set(run_ids)]
    rows = [row for r in runs for row in rows_from_run(r)]
    table = aggregate(rows)
    print(markdown(table), end="")
    if log and table:
        _log_comparison(client, tracking_uri, exp.experiment_id, runs, rows, table)
    return table


def _log_comparison(client, tracking_uri: str, experiment_id: str, runs, rows, table) -> None:
    """The ``comparison`` run: the table (Markdown, CSV, JSON), the picture, the runs it covers (tag
    ``compared_runs``, and links in its description)."""
    import csv

    from pipeline.results.tracking import MAX_TAG_CHARS, RunHandle

    covered = [r for r in runs if r.info.run_id in {row["run_id"] for row in rows}]
    links = ", ".join(f"[{r.info.run_name}](#/experiments/{experiment_id}/runs/{r.info.run_id})" for r in covered)
    text = f"{markdown(table)}\nRuns compared: {links}\n"
    tags = {"kind": "comparison", "compared_runs": ",".join(r.info.run_id for r in covered)[:MAX_TAG_CHARS]}
    run = client.create_run(experiment_id, run_name="comparison", tags=tags)
    h = RunHandle(tracking_uri, experiment_id, run.info.run_id)
    h.set_tags({"mlflow.note.content": text[:MAX_TAG_CHARS]})
    h.log_text(markdown(table), "comparison/table.md")
    h.log_json({"rows": rows, "table": table}, "comparison/table.json")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    for r in table:
        w.writerow({**r, "recipe": row_name(r), "seeds": " ".join(r["seeds"]), "run_ids": " ".join(r["run_ids"])})
    h.log_text(buf.getvalue(), "comparison/table.csv")
    h.log_bytes(picture(table), "comparison/accuracy_vs_nll.png")
    h.end("FINISHED")
