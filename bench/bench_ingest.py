"""Ingest benchmark: Parquet -> torch batches through Ray Data inside Ray Train workers, and the cost of a
training step fed by Ray Data relative to the same step fed from tensors already in memory.

    .venv/bin/python bench/bench_ingest.py [--data-dir ../shared/data] [--n-unlabeled 58000] [--epochs 2]

Runs on a local Ray instance (2 CPUs, 2 workers x 0.5 CPU). Reports the warm epoch (the last one). Uses MNIST
(1k labeled) when the data directory has it, else scikit-learn digits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # `python bench/bench_ingest.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]


def run(prepared, ispec, epochs, source, model, seed=0):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bench.harness import probe_loop
    from pipeline.data import build_datasets, data_config

    out = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    t0 = time.perf_counter()
    TorchTrainer(
        probe_loop,
        train_loop_config={
            "prepared": prepared,
            "ingest": ispec.__dict__,
            "epochs": epochs,
            "out_dir": str(out),
            "seed": seed,
            "source": source,
            "model": model,
        },
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets=build_datasets(prepared, seed=seed),
        dataset_config=data_config(ispec),
        run_config=RunConfig(name=out.name, storage_path=str(out / "ray_results")),
    ).fit()
    wall = time.perf_counter() - t0
    recs = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    assert len({tuple(r["steps"]) for r in recs}) == 1, recs
    last = [(r["steps"][-1], r["rows"][-1], r["seconds"][-1]) for r in recs]
    steps = last[0][0]
    sec = max(s for _, _, s in last)
    rows = sum(r for _, r, _ in last)
    return {
        "steps": steps,
        "sec": sec,
        "unl_rows_per_s": 2 * steps * ispec.unlabeled_batch / sec,
        "ms_per_step": 1000 * sec / steps,
        "rows_per_s": rows / sec,
        "first_epoch_sec": max(r["seconds"][0] for r in recs),
        "fit_wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("FLOWGMM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--n-unlabeled", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--home", default=None)
    a = ap.parse_args()

    import ray

    from pipeline.core.raycluster import export_checkout
    from pipeline.data import IngestSpec

    prepared = _prepare(a)
    export_checkout()  # the workers import bench.harness from this checkout
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=1024**3,
        logging_level="WARNING",
        log_to_driver=False,
    )
    B = a.batch
    rep = IngestSpec(labeled_batch=B, unlabeled_batch=B, labeled_mode="replicate")
    spl = IngestSpec(labeled_batch=B, unlabeled_batch=B, labeled_mode="split")
    res = {}
    res["ray/replicate/no-model"] = run(prepared, rep, a.epochs, "ray", None)
    res["ray/replicate/mlp"] = run(prepared, rep, a.epochs, "ray", "mlp")
    res["memory/mlp"] = run(prepared, rep, a.epochs, "memory", "mlp")
    res["ray/split/mlp"] = run(prepared, spl, a.epochs, "ray", "mlp")
    ray.shutdown()
    _report(res, prepared, B)


def _prepare(a):
    from pipeline.core.errors import DataError
    from pipeline.data import DataSpec, prepare

    home = a.home or tempfile.mkdtemp(prefix="bench-home-")
    t0 = time.perf_counter()
    try:
        spec = DataSpec(source="mnist", n_labeled=1000, n_val=1000, n_unlabeled=a.n_unlabeled, data_dir=a.data_dir)
        prepared = prepare(spec, home)
    except DataError as e:
        print(f"(no MNIST: {e}; using digits)")
        prepared = prepare(DataSpec(source="digits", n_labeled=100, n_val=100), home)
    print(f"prepare: {time.perf_counter() - t0:.2f} s  {prepared.manifest['label_summary']}  shape={prepared.shape}")
    return prepared


def _report(res, prepared, B) -> None:
    print(
        f"\n2 workers x 0.5 CPU, batch {B} labeled + {B} unlabeled (x2 views), warm epoch "
        f"({prepared.counts['unlabeled']} unlabeled rows)"
    )
    print(
        f"{'setup':26s} {'steps':>6s} {'epoch s':>8s} {'ms/step':>8s} {'rows/s':>9s} {'1st epoch s':>11s} {'fit s':>6s}"
    )
    for k, r in res.items():
        print(
            f"{k:26s} {r['steps']:6d} {r['sec']:8.2f} {r['ms_per_step']:8.2f} {r['rows_per_s']:9.0f} "
            f"{r['first_epoch_sec']:11.2f} {r['fit_wall_s']:6.1f}"
        )
    mem = res["memory/mlp"]["ms_per_step"]
    r = res["ray/replicate/no-model"]
    print(
        f"\nParquet -> torch batches (Ray Data, no model): {r['unl_rows_per_s']:.0f} unlabeled Parquet rows/s "
        f"aggregate over 2 workers ({r['rows_per_s']:.0f} rows/s counting the labeled batches too)"
    )
    print(
        f"step time ratio Ray Data / in-memory, replicated labeled: {res['ray/replicate/mlp']['ms_per_step'] / mem:.2f}"
    )
    print(f"step time ratio Ray Data / in-memory, split labeled:      {res['ray/split/mlp']['ms_per_step'] / mem:.2f}")


if __name__ == "__main__":
    main()
