"""When should the labels-only flow stop? Its validation and test curves on the shipped fixed-length recipes.

The labels-only baseline is the job's flow trained on the labeled rows alone, for the recipe's ``train.steps``: a
length chosen on validation for the semi-supervised model, which sees the unlabeled rows too. This trains it (the
product's model, optimizer, schedule, batches and loss, in a plain loop like ``bench_overhead.py``'s) and records at
every ``--every`` steps its validation accuracy, NLL and selection score (what the job's stopping rule reads) and its
test accuracy (recorded only to report what a rule would have cost; no rule is chosen on it). Then it replays the
job's stopping rule (``pipeline.train.state.ValidationStop`` at the recipe's evaluation points) for each patience and
prints, per rule, the steps it trains and the evaluated checkpoint's (the last one, or the best score's up to the
stop) validation and test accuracy next to the full length's.

    python bench/labels_only_stop.py --configs mnist_cpu --seeds 0 1 2
    python bench/labels_only_stop.py --configs digits moons breast_cancer --seeds 0 1 2 3 4
    python bench/labels_only_stop.py --replay bench/results/labels_only_stop_mnist_cpu.json   # the rules again
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/labels_only_stop.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402

PATIENCES = (1, 2, 3)


def curve(config: str, seed: int, every: int, home: Path) -> list[dict[str, float]]:
    """The labels-only flow's validation and test metrics every ``every`` steps (and at the last)."""
    import numpy as np
    import torch

    from flowgmm.metrics import selection_score
    from flowgmm.spec import build_model
    from pipeline.config import resolve
    from pipeline.data import prepare
    from pipeline.data.shards import load_split
    from pipeline.data.stream import SSLStream
    from pipeline.train.engine import build_optimizer
    from pipeline.train.loop import driver_threads
    from pipeline.train.model import model_spec
    from pipeline.train.state import lr_lambda
    from pipeline.train.step import apply_gradients, compute_loss
    from pipeline.train.validate import validate

    cfg = resolve(config, overrides=[f"data.seed={seed}", f"train.seed={seed}", "train.method=labels_only"])
    t = cfg.train
    prepared = prepare(cfg.data, home)
    torch.set_num_threads(driver_threads(t) if t.num_workers == 0 else torch.get_num_threads())
    torch.manual_seed(t.seed)
    model = build_model(model_spec(cfg, prepared))
    opt = build_optimizer(model, t, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, t.steps))
    it = SSLStream.in_memory(prepared, cfg.ingest, seed=t.seed, unlabeled=False, second_view=False).batches(0)
    splits = {s: load_split(prepared, s) for s in ("val", "test")}
    out = []
    for k in range(1, t.steps + 1):
        loss, _ = compute_loss(model, model, next(it), t, k - 1, prepared.levels)
        apply_gradients(loss, model, opt, sched, t.grad_clip)
        if k % every and k != t.steps:
            continue
        row: dict[str, float] = {"step": float(k)}
        for split, (x, y) in splits.items():
            m = validate(model, x, y, levels=prepared.levels, device=torch.device("cpu"))
            row.update({f"{split}_accuracy": m["accuracy"], f"{split}_nll": m["nll"]})
        row["score"] = selection_score(row["val_accuracy"], row["val_nll"])
        if not np.isfinite(row["score"]):
            raise SystemExit(f"{config} seed {seed}: non-finite validation score at step {k}")
        model.train()
        out.append(row)
    return out


def replay(rows: list[dict[str, float]], rule: dict[str, Any]) -> dict[str, float]:
    """The job's stopping rule (``ValidationStop``: ``patience`` evaluation points without a better score smoothed
    with weight ``smoothing`` on the past; 0: never) at every ``cadence`` steps: the step it stops at, and the
    metrics of the checkpoint it evaluates (``pick``: the last one trained, or the best score's up to there)."""
    from pipeline.train.state import ValidationStop

    stop = ValidationStop(rule["patience"], 0, rule["smoothing"])
    points = [r for r in rows if int(r["step"]) % rule["cadence"] == 0 or r is rows[-1]]
    seen = []
    for r in points:
        seen.append(r)
        if stop.update(int(r["step"]), r["score"]) and r is not points[-1]:
            break
    chosen = max(seen, key=lambda r: (r["score"], r["step"])) if rule["pick"] == "best" else seen[-1]
    return {**chosen, "stopped_at": seen[-1]["step"]}


def rules(eval_every: int, every: int) -> dict[str, dict[str, Any]]:
    """The recipe's full length (last or best checkpoint), and stops at the recipe's and the recorded cadence."""
    out = {
        f"full length, {pick} checkpoint": {"cadence": eval_every, "patience": 0, "smoothing": 0.5, "pick": pick}
        for pick in ("last", "best")
    }
    for cadence in dict.fromkeys((eval_every, every)):
        for smoothing in (0.5, 0.0):
            for p in PATIENCES:
                name = f"every {cadence}, patience {p}, smoothing {smoothing:g}, best checkpoint"
                out[name] = {"cadence": cadence, "patience": p, "smoothing": smoothing, "pick": "best"}
    return out


def study(configs: list[str], seeds: list[int], every: int | None, home: Path) -> dict[str, Any]:
    from pipeline.config import resolve

    figures: dict[str, Any] = {}
    for config in configs:
        t = resolve(config).train
        step = every or max(1, t.eval_every // 2)
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            rows = curve(config, seed, step, home)
            runs.append({"seed": seed, "seconds": time.perf_counter() - t0, "curve": rows})
            print(f"[labels_only_stop] {config} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        figures[config] = {"steps": t.steps, "eval_every": t.eval_every, "runs": runs, "rules": replays(runs, t, step)}
    return figures


def replays(runs: list[dict[str, Any]], t, every: int) -> dict[str, Any]:
    out = {}
    for name, rule in rules(t.eval_every, every).items():
        picks = [replay(r["curve"], rule) for r in runs]
        out[name] = {
            **rule,
            "steps": [x["stopped_at"] for x in picks],
            "val_accuracy": [x["val_accuracy"] for x in picks],
            "test_accuracy": [x["test_accuracy"] for x in picks],
        }
    return out


def markdown(figures: dict[str, Any]) -> str:
    lines = []
    for config, f in figures.items():
        lines += [
            f"**{config}** (recipe {f['steps']} steps, evaluated every {f['eval_every']}; seeds "
            f"{', '.join(str(r['seed']) for r in f['runs'])})",
            "",
            "| labels-only flow | steps (per seed) | val accuracy, median | test accuracy, median | test, per seed |",
            "|---|---|---|---|---|",
        ]
        for rule, r in f["rules"].items():
            per_seed = " ".join(f"{a:.4f}" for a in r["test_accuracy"])
            lines.append(
                f"| {rule} | {' '.join(str(int(s)) for s in r['steps'])} | {statistics.median(r['val_accuracy']):.4f}"
                f" | {statistics.median(r['test_accuracy']):.4f} | {per_seed} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["mnist_cpu"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--every", type=int, default=None, help="steps between recorded points (default: half the recipe's)")
    p.add_argument("--replay", type=Path, default=None, help="replay the rules on this result file's curves")
    p.add_argument("--home", type=Path, default=None, help="where the data are prepared (default: a temporary one)")
    add_dry_run(p)
    args = p.parse_args()
    exit_if_dry_run(args, args.configs)
    if args.replay:  # the rules again on a result file's recorded curves (no training): its rules rewritten
        import json

        from pipeline.config import resolve
        from pipeline.core.atomic import atomic_write_text

        record = json.loads(args.replay.read_text())
        for config, f in record["figures"].items():
            f["rules"] = replays(f["runs"], resolve(config).train, int(f["runs"][0]["curve"][0]["step"]))
        atomic_write_text(args.replay, json.dumps(record, indent=1, default=str) + "\n")
        print(markdown(record["figures"]))
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        figures = study(args.configs, args.seeds, args.every, args.home or Path(tmp))
    write_result(f"labels_only_stop_{'_'.join(args.configs)}", figures, markdown(figures))


if __name__ == "__main__":
    main()
