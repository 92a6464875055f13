"""How the shipped recipes were chosen: a grid of variants x seeds 0-4, each trained in process with the product's
own Engine (model, optimizer, step), SSLStream (batches, augmentation) and validation, one thread per job. The
choice uses validation accuracy only (median over seeds, then mean); test accuracy is recorded for the report.

    python bench/recipe_search.py export --data /tmp/rs         # prepare every experiment x seed (needs pyarrow)
    python bench/recipe_search.py run --data /tmp/rs --out /tmp/rs/results.jsonl --procs 16 --budget 400
    python bench/recipe_search.py table --out /tmp/rs/results.jsonl

``run`` needs only torch, numpy and PyYAML (no Ray, MLflow, pyarrow or scikit-learn), so it runs on a bare GPU host's
CPU cores (bench/RESULTS.md, "Recipes": a 16-core host). Variants are overrides of the shipped experiments
(``VARIANTS``). ``table`` prints the table of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402

CONS = "train.method=flowgmm_cons"
FG = "train.method=flowgmm"
SUP = "train.method=labels_only"
DIG_CONS = "train.consistency_start_step=500 train.consistency_ramp_steps=500 train.consistency_threshold=0.9"
MOONS_CONS = "train.consistency_start_step=100 train.consistency_ramp_steps=200 train.consistency_threshold=0.9"
IMG = "model.flow=image model.mid_channels=32 model.num_blocks=2 train.steps=1000"
BC_CONS = "train.consistency_start_step=50 train.consistency_ramp_steps=100 train.consistency_threshold=0.9"
VARIANTS: dict[str, dict[str, str]] = {
    "digits": {
        "fg-lw8": f"{FG} model.hidden=128",
        "fg-lw4": f"{FG} model.hidden=128 train.label_weight=4",
        "fg-lw16": f"{FG} model.hidden=128 train.label_weight=16",
        "fg-h256": FG,
        "fg-ms1": f"{FG} model.hidden=128 model.means_scale=1.0",
        "fg-ms3": f"{FG} model.hidden=128 model.means_scale=3.0",
        "fg-u64": f"{FG} model.hidden=128 ingest.unlabeled_batch=64",
        "fg-4000": f"{FG} model.hidden=128 train.steps=4000",
        "sup-lw8": f"{SUP} model.hidden=128",
        "sup-lw16": f"{SUP} model.hidden=128 train.label_weight=16",
        "sup-h256": SUP,
        "cons-t90-s500": f"{CONS} model.hidden=128",
        "cons-t0-s0": f"{CONS} model.hidden=128 train.consistency_threshold=0 train.consistency_start_step=0 "
        "train.consistency_ramp_steps=1000",
        "cons-t95-s1000": f"{CONS} model.hidden=128 train.consistency_threshold=0.95 train.consistency_start_step=1000",
        "cons-unl-t90-s500": f"{CONS} model.hidden=128 train.consistency_rows=unlabeled",
        "cons-h256-t90-s500": CONS,
        "cons-h256-t0-s0": f"{CONS} train.consistency_threshold=0 train.consistency_start_step=0 "
        "train.consistency_ramp_steps=1000",
        "img-batch": f"{FG} {IMG} model.norm=batch",
        "img-act": f"{FG} {IMG} model.norm=act",
    },
    "moons": {
        "fg-150": "model.hidden=64 train.steps=150",
        "fg-600": "model.hidden=64",
        "fg-600-h128": "",
        "fg-1500": "model.hidden=64 train.steps=1500",
        "fg-600-ms3": "model.hidden=64 model.means_scale=3.0",
        "sup-600": f"{SUP} model.hidden=64",
        "cons-600": f"{CONS} model.hidden=64 {MOONS_CONS}",
        "cons-600-h128": f"{CONS} {MOONS_CONS}",
        "cons-1000": f"{CONS} model.hidden=64 {MOONS_CONS} train.steps=1000",
        "cons-600-t0": f"{CONS} model.hidden=64 {MOONS_CONS} train.consistency_threshold=0",
    },
    "breast_cancer": {
        "fg-60": f"{FG} train.label_weight=1 train.steps=60",
        "fg-300": f"{FG} train.label_weight=1",
        "fg-1000": f"{FG} train.label_weight=1 train.steps=1000",
        "fg-300-lw3": FG,
        "fg-500-lw3": f"{FG} train.steps=500",
        "sup-300": f"{SUP} train.label_weight=1",
        "sup-300-lw3": SUP,
        "cons-300": f"{CONS} train.label_weight=1 {BC_CONS}",
        "cons-300-lw3": CONS,
    },
}


def export(out: Path) -> None:
    """Every experiment x seed prepared by the product, saved as arrays + the manifest fields the stream needs."""
    import numpy as np

    from pipeline.config import resolve
    from pipeline.data import load_split, prepare

    out.mkdir(parents=True, exist_ok=True)
    keys = ("name", "kind", "shape", "levels", "num_classes", "class_names", "counts", "feature_mean", "feature_std")
    for name in VARIANTS:
        for seed in range(5):
            p = prepare(resolve(name, overrides=[f"data.seed={seed}"]).data, out / "home")
            arrays = {
                f"{a}_{s}": v for s in ("labeled", "val", "test", "unlabeled") for a, v in zip("xy", load_split(p, s))
            }
            np.savez(out / f"{name}-{seed}.npz", **arrays)
            (out / f"{name}-{seed}.json").write_text(json.dumps({k: p.manifest.get(k) for k in keys}))


def train_one(job: tuple[str, str, int, str]) -> dict[str, Any]:
    """One variant on one seed: the product's Engine and stream in process; validation (and test) accuracy."""
    import numpy as np
    import torch

    from pipeline.config import resolve
    from pipeline.data.stream import SSLStream
    from pipeline.train.engine import Engine
    from pipeline.train.validate import validate

    data, name, seed, tag = job
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = resolve(name, overrides=[*VARIANTS[name][tag].split(), f"data.seed={seed}", f"train.seed={seed}"])
    m = json.loads(Path(data, f"{name}-{seed}.json").read_text())
    a = np.load(Path(data, f"{name}-{seed}.npz"))
    spec = {k: m[k] for k in ("kind", "shape", "num_classes", "class_names")}
    spec.update(model=vars(cfg.model).copy(), seed=seed, levels=m["levels"])
    spec.update(feature_mean=m.get("feature_mean"), feature_std=m.get("feature_std"))
    engine, t = Engine(spec, cfg, torch.device("cpu")), cfg.train
    arrays = {"x_lab": a["x_labeled"], "y_lab": a["y_labeled"], "x_unl": a["x_unlabeled"]}
    views = {"unlabeled": t.method != "labels_only", "second_view": t.method == "flowgmm_cons"}
    batches = SSLStream.in_memory(m, cfg.ingest, seed=seed, arrays=arrays, **views).batches(0)
    t0 = time.time()
    for _ in range(t.steps):
        engine.train_step(next(batches))
    val = validate(engine.model, a["x_val"], a["y_val"], levels=engine.levels, device=engine.device)
    test = validate(engine.model, a["x_test"], a["y_test"], levels=engine.levels, device=engine.device)
    return {"data": name, "tag": tag, "seed": seed, "val": val["accuracy"], "test": test["accuracy"],
            "s": round(time.time() - t0, 1)}  # fmt: skip


def run(data: Path, out: Path, procs: int, budget: float) -> None:
    jobs = [(str(data), n, s, tag) for n, grid in VARIANTS.items() for tag in grid for s in range(5)]
    t0 = time.time()
    with mp.get_context("fork").Pool(procs) as pool, open(out, "a") as f:
        for r in pool.imap_unordered(train_one, jobs):
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(
                f"{time.time() - t0:5.0f}s {r['data']:14s} {r['tag']:20s} s{r['seed']} val {r['val']:.3f}", flush=True
            )
            if time.time() - t0 > budget:
                pool.terminate()
                break


def table(out: Path) -> None:
    """Per variant: validation accuracy median / mean (the choice), test accuracy median [min, max] (the report),
    median seconds per run; the block of bench/RESULTS.md, figures in ``bench/results/recipe_search.json``."""
    groups = collections.defaultdict(list)
    for line in out.read_text().splitlines():
        r = json.loads(line)
        groups[(r["data"], r["tag"])].append(r)
    lines = [
        "| data | variant | seeds | validation accuracy median / mean | test accuracy median [min, max] | s per run |",
        "|---|---|---|---|---|---|",
    ]
    figures = {}
    for (d, tag), rs in sorted(groups.items()):
        va, te = [r["val"] for r in rs], [r["test"] for r in rs]
        row = {"seeds": len(rs), "val_median": statistics.median(va), "val_mean": statistics.mean(va)}
        row.update(test_median=statistics.median(te), test_min=min(te), test_max=max(te))
        row["s_median"] = statistics.median(r["s"] for r in rs)
        figures[f"{d}/{tag}"] = row
        lines.append(
            f"| {d} | {tag} | {row['seeds']} | {row['val_median']:.3f} / {row['val_mean']:.3f} | "
            f"{row['test_median']:.3f} [{row['test_min']:.3f}, {row['test_max']:.3f}] | {row['s_median']:.0f} |"
        )
    write_result("recipe_search", {"results": str(out), "variants": figures}, "\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("export", "run", "table"))
    p.add_argument("--data", type=Path, default=Path("/tmp/rs"), help="the exported splits (export writes them)")
    p.add_argument("--out", type=Path, default=Path("/tmp/rs/results.jsonl"), help="one JSON line per job")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--budget", type=float, default=3600.0, help="seconds; stop taking results after this")
    add_dry_run(p)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    exit_if_dry_run(a)
    if a.command == "export":
        export(a.data)
    elif a.command == "run":
        run(a.data, a.out, a.procs, a.budget)
    else:
        table(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
