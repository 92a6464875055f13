"""MNIST with 1,000 labels, FlowGMM-cons, on one GPU for a fixed time, through the training loop's own step
(``pipeline.train.engine.Engine``, the fast path from the configuration) and the product's evaluation
(``pipeline.results.evaluate.evaluate_model``: calibration, out-of-domain AUROC). No Ray, no MLflow.

    python bench/gpu_mnist.py --minutes 3 train.batch_rows=2048 train.channels_last=true train.compile=full
    python bench/gpu_mnist.py --tiny --minutes 0.3                     # CPU smoke test of the script

Prints test accuracy against time while it trains (the learning-rate schedule is sized to the time budget from the
measured step time), then the calibration table and the OOD table as the block of bench/RESULTS.md (figures in
``bench/results/gpu_mnist.json``, ``gpu_mnist_tiny.json`` for ``--tiny``); ``--json`` keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/gpu_mnist.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from pipeline.core.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build(a: argparse.Namespace):
    import torch

    from pipeline.config import resolve
    from pipeline.data import prepare
    from pipeline.data.stream import SSLStream
    from pipeline.train.engine import Engine
    from pipeline.train.model import model_spec

    over = list(a.overrides)
    if a.tiny:
        torch.set_num_threads(1)  # tiny convolutions on a shared CPU: threads only contend
        over += [
            "model.mid_channels=8",
            "model.num_blocks=1",
            "data.n_unlabeled=2000",
            "data.n_test=500",
            "ingest.labeled_batch=8",
            "ingest.unlabeled_batch=24",
        ]
    cfg = resolve("mnist", overrides=over + ["train.use_gpu=false"])  # the device is chosen here, not by Ray
    prepared = prepare(replace(cfg.data, data_dir=a.data_dir or cfg.data.data_dir), a.home)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    torch.manual_seed(cfg.train.seed)
    engine = Engine(model_spec(cfg, prepared), cfg, device, compile_cache=a.compile_cache)
    stream = SSLStream.in_memory(prepared, cfg.ingest, seed=cfg.train.seed, device=device, second_view=True)
    return cfg, prepared, device, engine, stream


def resize_schedule(engine, cfg, total_steps: int) -> None:
    """Warm-up then cosine decay ending at ``total_steps`` (the step budget that fits the time)."""
    import torch

    from pipeline.train.state import lr_lambda

    for g in engine.optimizer.param_groups:
        g["lr"] = g.get("initial_lr", g["lr"])
    engine.scheduler = torch.optim.lr_scheduler.LambdaLR(
        engine.optimizer, lr_lambda(cfg, total_steps), last_epoch=engine.step - 1
    )


def quick_accuracy(engine, prepared, split: str, device) -> float:
    from pipeline.data import load_split
    from pipeline.train.validate import validate

    x, y = load_split(prepared, split)
    return validate(engine.model, x, y, levels=256, device=device, batch_size=2000)["accuracy"]


def train(a: argparse.Namespace, cfg, prepared, device, engine, stream) -> list[dict[str, Any]]:
    budget = a.minutes * 60.0
    t0 = time.time()
    it = stream.batches(0)
    for _ in range(5):  # compile warm-up (cached when the compile cache is warm), then the step time
        engine.train_step(next(it))
    fp = engine.fast_path_metrics()
    t1 = time.time()
    for _ in range(5):
        engine.train_step(next(it))
    engine.check_finite()
    step_s = (time.time() - t1) / 5
    total = max(engine.step + 1, int(engine.step + (budget - (time.time() - t0)) / step_s * 0.9))
    resize_schedule(engine, cfg, total)
    print(f"warm-up {time.time() - t0:.1f} s ({fp}), {step_s * 1000:.0f} ms/step -> {total} steps", flush=True)
    curve, next_eval = [], time.time() + a.eval_every_s
    while engine.step < total and time.time() - t0 < budget:
        engine.train_step(next(it))
        if time.time() >= next_eval or engine.step == total:
            engine.check_finite()
            row = {
                "seconds": round(time.time() - t0, 1),
                "step": engine.step,
                "images": engine.step * (cfg.ingest.labeled_batch + cfg.ingest.unlabeled_batch),
                "test_accuracy": quick_accuracy(engine, prepared, "test", device),
            }
            curve.append(row)
            print(json.dumps(row), flush=True)
            next_eval = time.time() + a.eval_every_s
    return curve


def evaluate(a: argparse.Namespace, cfg, prepared, device, engine) -> Any:
    from pipeline.results.evaluate import evaluate_model

    with tempfile.TemporaryDirectory() as d:
        engine.save(d)
        return evaluate_model(
            d, prepared, replace(cfg, eval=replace(cfg.eval, figures=False, baselines=False)), device=str(device)
        )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--eval-every-s", type=float, default=30.0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--home", default=None)
    ap.add_argument("--compile-cache", default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    add_dry_run(ap)
    return ap


def markdown(curve: list[dict[str, Any]], ev: Any) -> str:
    """Test accuracy against time, then the calibration and out-of-domain tables."""
    lines = ["| seconds | step | images | test accuracy |", "|---|---|---|---|"]
    lines += [f"| {r['seconds']} | {r['step']} | {r['images']} | {r['test_accuracy']:.4f} |" for r in curve]
    keys = ("split", "model", "variance_scale", "accuracy", "nll", "ece")
    lines += ["", "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    for r in ev.calibration_table:
        lines.append("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    lines += ["", "| out-of-domain set | score | AUROC |", "|---|---|---|"]
    lines += [f"| {r['ood_set']} | {r['score']} | {r['auroc']:.4f} |" for r in ev.ood_table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = build_parser().parse_args(argv)
    exit_if_dry_run(a, ["mnist"], a.overrides)
    a.home = a.home or tempfile.mkdtemp(prefix="gpu-mnist-")
    a.data_dir = a.data_dir or os.environ.get("FLOWGMM_DATA")
    cfg, prepared, device, engine, stream = build(a)
    curve = train(a, cfg, prepared, device, engine, stream)
    ev = evaluate(a, cfg, prepared, device, engine)
    out = {
        "curve": curve,
        "metrics": ev.metrics,
        "calibration": ev.calibration_table,
        "ood": ev.ood_table,
        "overrides": a.overrides,
        "device": str(device),
    }
    if a.json:
        atomic_write_text(a.json, json.dumps(out, indent=1, default=str))
    write_result("gpu_mnist_tiny" if a.tiny else "gpu_mnist", out, markdown(curve, ev))
    return out


if __name__ == "__main__":
    main()
