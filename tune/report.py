"""What a finished sweep leaves behind: one row per trial, the best completed trial, and the comparison picture.

The best trial is chosen among the trials that ran to the end (and were therefore calibrated and evaluated) by
the sweep metric measured on the **validation** split with the calibrated model (``final_val_*_calibrated``);
the test split is reported, never used for selection.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Collection

from flowgmm.metrics import selection_score
from tune.space import PARAMS
from tune.trial import EVALUATED

COMPLETED, STOPPED, ERROR = "completed", "stopped_early", "error"
FINAL_KEYS = (
    "final_val_accuracy_calibrated",
    "final_val_nll_calibrated",
    "final_val_ece_calibrated",
    "test_accuracy",
    "test_accuracy_calibrated",
    "test_nll_calibrated",
    "test_ece_calibrated",
    "test_bpd",
    "variance_scale",
    "train_seconds",
)


def trial_id_of(result) -> str:
    """Trial directories are named ``trial_<id>`` by the sweep (``trial_dirname_creator``)."""
    m = result.metrics or {}
    if m.get("trial_id"):
        return str(m["trial_id"])
    name = Path(str(result.path)).name
    return name[len("trial_") :] if name.startswith("trial_") else name


def trial_rows(results, children: dict[str, Any] | None = None, stopped: Collection[str] = ()) -> list[dict[str, Any]]:
    """One row per trial of a ``ResultGrid``: parameters, how far it got, the validation curve (from
    Tune) and, for trials that ran to the end, the final calibrated metrics (from the trial's MLflow child run in
    ``children``, keyed by trial id). Status: ``error``; ``stopped_early`` when the scheduler stopped it (its id in
    ``stopped``: what the console said; a trial whose last steps and evaluation finished before the stop arrived
    counts as stopped too) or when it ended before evaluation; else ``completed``."""
    children = children or {}
    rows = []
    for r in results:
        tid = trial_id_of(r)
        df = r.metrics_dataframe
        points: list[dict[str, float]] = []
        if df is not None and len(df) and "step" in df.columns:
            for _, e in df[df["step"].notna()].iterrows():
                points.append(
                    {k: float(e[k]) for k in ("step", "val_accuracy", "val_nll", "score") if k in e and _finite(e[k])}
                )
        child = children.get(tid)
        final = dict(child.data.metrics) if child is not None else {}
        evaluated = child is not None and child.info.status == "FINISHED" and final.get(EVALUATED) == 1.0
        status = ERROR if r.error is not None else COMPLETED if evaluated and tid not in stopped else STOPPED
        row: dict[str, Any] = {"trial_id": tid, "status": status}
        cfg = r.config or {}
        for k in PARAMS:
            row[k] = cfg.get(k)
        w = cfg.get("consistency_weight")
        row["method"] = None if w is None else ("flowgmm_cons" if float(w) > 0 else "flowgmm")
        row["steps_run"] = int(max((e["step"] for e in points), default=0))
        lastep = points[-1] if points else {}
        for k in ("val_accuracy", "val_nll", "score"):
            row[f"last_{k}"] = lastep.get(k)
        row["best_score"] = max((e["score"] for e in points if "score" in e), default=None)
        for k in FINAL_KEYS:
            v = final.get(k) if status == COMPLETED else None
            row[k] = float(v) if _finite(v) else None
        row["mlflow_run_id"] = child.info.run_id if child is not None else None
        row["error"] = None if r.error is None else f"{type(r.error).__name__}: {str(r.error)[:300]}"
        row["curve"] = points
        rows.append(row)
    rows.sort(key=lambda x: x["trial_id"])
    return rows


def selection_value(row: dict[str, Any], metric: str) -> float | None:
    """The number the best trial maximises (validation, calibrated): accuracy, -NLL or the training score."""
    acc, nll = row.get("final_val_accuracy_calibrated"), row.get("final_val_nll_calibrated")
    if acc is None or nll is None:
        return None
    if metric == "val_nll":
        return -nll
    if metric == "score":
        return selection_score(acc, nll)
    return acc


def best_row(rows: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    done = [r for r in rows if r["status"] == COMPLETED and selection_value(r, metric) is not None]
    if not done:
        return None
    # ties (small validation sets) go to the lower calibrated NLL, then to the earlier trial
    return max(done, key=lambda r: (selection_value(r, metric), -r["final_val_nll_calibrated"], -rows.index(r)))


def to_csv(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in rows[0] if c != "curve"] if rows else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    return buf.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, default=str)


def to_text(rows: list[dict[str, Any]]) -> str:
    cols = (
        "trial_id",
        "status",
        "lr",
        "consistency_weight",
        "means_scale",
        "variance",
        "learn_variance",
        "steps_run",
        "last_val_accuracy",
        "final_val_accuracy_calibrated",
        "final_val_nll_calibrated",
        "test_accuracy_calibrated",
    )
    out = ["  ".join(f"{c:>14.14s}" for c in cols)]
    for r in rows:
        out.append("  ".join(f"{_fmt(r.get(c)):>14.14s}" for c in cols))
    return "\n".join(out)


def comparison_png(rows: list[dict[str, Any]], metric: str, best_id: str | None, default_id: str | None) -> bytes:
    """Validation accuracy against learning rate (colour: consistency weight) and against consistency weight
    (colour: log10 lr), and the validation curves of the sweep metric. Completed trials show their final
    calibrated validation accuracy (filled), stopped ones their last report (crosses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    weights = sorted({float(r["consistency_weight"]) for r in rows if r.get("consistency_weight") is not None})
    _scatter_panels(plt, axes, rows, weights, best_id, default_id)
    _curves_panel(axes[2], rows, metric, best_id)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _scatter_panels(plt, axes, rows, weights: list[float], best_id, default_id) -> None:
    cmap = plt.get_cmap("viridis", max(len(weights), 2))
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    lr_lo, lr_hi = (math.log10(min(lrs)), math.log10(max(lrs))) if lrs else (0, 1)
    for i_row, r in enumerate(rows):
        y = r["final_val_accuracy_calibrated"] if r["status"] == COMPLETED else r.get("last_val_accuracy")
        if y is None or r.get("lr") is None:
            continue
        done = r["status"] == COMPLETED
        ci = weights.index(float(r["consistency_weight"]))
        kw = dict(s=70 if done else 60, marker="o" if done else "x", zorder=3)
        axes[0].scatter(float(r["lr"]), y, color=cmap(ci), **kw)
        jitter = ((i_row * 7) % 11 - 5) * 0.015
        lr_c = plt.get_cmap("plasma")((math.log10(float(r["lr"])) - lr_lo) / max(lr_hi - lr_lo, 1e-9))
        axes[1].scatter(ci + jitter, y, color=lr_c, **kw)
        for ax, x in ((axes[0], float(r["lr"])), (axes[1], ci + jitter)):
            if r["trial_id"] == best_id:
                ax.scatter(x, y, s=260, facecolors="none", edgecolors="red", linewidths=2, zorder=4)
            if r["trial_id"] == default_id:
                ax.scatter(x, y, s=180, facecolors="none", edgecolors="black", linewidths=1.5, linestyle="--", zorder=4)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("learning rate")
    axes[0].set_ylabel("validation accuracy")
    axes[0].set_title("by learning rate (colour: consistency weight)")
    for i, w in enumerate(weights):
        axes[0].scatter([], [], color=cmap(i), label=f"cons. weight {w:g}" + (" (FlowGMM)" if w == 0 else ""))
    axes[0].scatter([], [], marker="x", color="gray", label="stopped early (last report)")
    axes[0].scatter([], [], facecolors="none", edgecolors="red", label="best")
    axes[0].scatter([], [], facecolors="none", edgecolors="black", linestyle="--", label="default")
    axes[0].legend(fontsize=7, loc="best")
    axes[1].set_xticks(range(len(weights)), [f"{w:g}" for w in weights])
    axes[1].set_xlabel("consistency weight (0 = plain FlowGMM)")
    axes[1].set_title(f"by consistency weight (colour: log10 lr {lr_lo:.1f}..{lr_hi:.1f})")


def _curves_panel(ax, rows, metric: str, best_id) -> None:
    import numpy as np

    for r in rows:
        pts = [(e["step"], e[metric]) for e in r.get("curve", []) if metric in e]
        if not pts:
            continue
        x, y = np.array(pts).T
        style = "-" if r["status"] == COMPLETED else "--"
        lw = 3 if r["trial_id"] == best_id else 1.2
        ax.plot(x, y, style, marker="o", ms=3, lw=lw, label=f"{r['trial_id']} ({r['status']})")
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title("validation during training (dashed: stopped by ASHA)")
    if len(rows) <= 12:
        ax.legend(fontsize=6, loc="best")


def _finite(v: Any) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
