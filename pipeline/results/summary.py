"""The results table a job prints when it ends: accuracy, NLL and ECE before and after calibration, the baselines,
out-of-domain detection, where the time went, and where the run and the model live."""

from __future__ import annotations

from typing import Any

from pipeline.config.methods import ANCHORS, LABELS_ONLY, method_name


def summary_lines(cfg, result: dict[str, Any], handle, timing: dict[str, float]) -> list[str]:
    m = result["metrics"]
    labels = cfg.data.n_labeled if cfg.data.n_labeled is not None else m.get("labeled_rows")
    labels = f"{labels:.0f} labels" if labels is not None else "labels sized from the data"
    rows = f", {m['test_rows']:.0f} test rows" if "test_rows" in m else ""
    out = [f"[flowgmm] results on the test split ({cfg.data.source}, {labels}{rows})"]
    table: list[tuple[str, str]] = []  # (model, its cells), formatted once the widest name is known

    def row(name: str, prefix: str, suffix: str = "") -> None:
        acc = m.get(f"{prefix}accuracy{suffix}")
        if acc is None:
            return
        nll, ece = m.get(f"{prefix}nll{suffix}"), m.get(f"{prefix}ece{suffix}")
        table.append(
            (name, f"{acc:>9.3f}" + "".join(f"{v:>8.3f}" if v is not None else f"{'':>8}" for v in (nll, ece)))
        )

    method = method_name(cfg.train.method)
    row(f"{method}, uncalibrated", "test_")
    row(f"{method}, calibrated (variance x{m.get('variance_scale', 1.0):.2f})", "test_", "_calibrated")
    row(f"{LABELS_ONLY.display}, calibrated{_labels_only_note(cfg, result)}", f"{LABELS_ONLY.key}_test_", "_calibrated")
    for key, name in ANCHORS.items():
        row(name, f"baseline_{key}_test_")
    width = max([40, *(len(name) + 2 for name, _ in table)])
    out.append(f"  {'model':<{width}}{'accuracy':>9}{'NLL':>8}{'ECE':>8}")
    out += [f"  {name:<{width}}{cells}" for name, cells in table]
    if result.get("calibration_note"):
        out.append(f"  calibration: {result['calibration_note']}")
    out += _size_lines(m, method)
    out += _ood_lines(result["ood"], m)
    out.append(_time_line(m, timing, result.get("ray_started", True)))
    out.append(f"  model: {_model_text(result)} · weights in {result['model_dir']}")
    out.append(f"  MLflow: run {handle.run_id} · view with: {ui_command(handle.tracking_uri)}")
    return out


def _labels_only_note(cfg, result: dict[str, Any]) -> str:
    """Where the labels-only flow's figures came from, and when it stopped short of the recipe's steps."""
    notes = [f"reused from {result['baseline_reused']}"] if result.get("baseline_reused") else []
    steps = result["metrics"].get(f"{LABELS_ONLY.key}_steps_trained")
    if steps is not None and cfg.train.steps and steps < cfg.train.steps:
        notes.append(f"stopped on validation at step {steps:,.0f}, its best checkpoint")
    return f" ({'; '.join(notes)})" if notes else ""


def print_summary(cfg, result: dict[str, Any], handle, timing: dict[str, float]) -> None:
    """Print the results table; it is also the MLflow run's description (the run page shows it)."""
    text = "\n".join(summary_lines(cfg, result, handle, timing))
    print(text, flush=True)
    handle.describe(text)


def _model_text(result: dict[str, Any]) -> str:
    """The registered version's URI as the registry resolves it, and whether (and why) it is ``@champion``."""
    reg = result.get("registration")
    if reg is None:
        return result["model_uri"]
    return f"{reg.uri} ({'' if reg.promoted else 'not '}@champion: {reg.reason})"


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


SMALL_VAL = 50  # below this many validation rows the calibration and the model selection are rough


def _size_lines(m: dict[str, Any], method: str) -> list[str]:
    """The 95% interval on test accuracy and its test rows; a note when the validation split is small."""
    out = []
    if "test_accuracy_ci_low" in m and "test_rows" in m:
        low, high, n = m["test_accuracy_ci_low"], m["test_accuracy_ci_high"], m["test_rows"]
        out.append(f"  {method} test accuracy: 95% interval [{low:.3f}, {high:.3f}] over {n:.0f} test rows")
    if "val_rows" in m and m["val_rows"] < SMALL_VAL:
        out.append(
            f"  note: only {m['val_rows']:.0f} validation rows (under {SMALL_VAL}) for calibration and model "
            "selection: the calibrated figures are rough"
        )
    return out


def _ood_lines(rows: list[dict[str, Any]], m: dict[str, Any]) -> list[str]:
    """bits/dim, then one line per out-of-domain set: each score's AUROC and false-positive rate at 95% TPR."""
    out = []
    if "test_bpd" in m:
        out.append(f"  bits/dim (test) {m['test_bpd']:.3f}")
    by_set: dict[str, list[str]] = {}
    for r in rows:
        by_set.setdefault(r["ood_set"], []).append(f"{r['score']} {r['auroc']:.3f}/{r['fpr95']:.3f}")
    for name, cells in by_set.items():
        out.append(f"  out-of-domain {name} (AUROC/FPR95): " + ", ".join(cells))
    return out


def _time_line(m: dict[str, Any], timing: dict[str, float], ray_started: bool = True) -> str:
    """Where the wall time went, in order; then what ran beside the main model's training (overlapped: not part of
    the sum): Ray's start, when the model trained in this process, and the baselines, when they had room; and that
    Ray was never started (a model trained in this process, its baselines beside it in a process or after it)."""
    names = (
        ("ray_start", "Ray"),
        ("prepare", "data"),
        ("train", "training"),
        ("evaluate", "evaluation"),
        ("baseline", "baselines"),
        ("ood_models", "OOD models"),
        ("mlflow", "MLflow"),
    )
    parts = " + ".join(f"{label} {timing[k]:.0f}" for k, label in names if k in timing)
    beside = [f"Ray's start {timing['ray_start_beside']:.0f}"] if "ray_start_beside" in timing else []
    if "time_baselines_beside_s" in m:
        beside.append(f"baselines {m['time_baselines_beside_s']:.0f}")
    overlapped = f"; beside the training: {', '.join(beside)}" if beside else ""
    if not ray_started:
        overlapped += "; Ray not started"
    wall, steps = m.get("wall_seconds", 0), m.get("train_steps", 0)
    return f"  time: {wall:.0f} s wall = {parts} (+ the rest){overlapped} · {steps:.0f} training steps"
