"""The driver side of training: the Ray Datasets a run trains on, the ``TorchTrainer`` that runs the per-worker
loop, and picking the best checkpoint from its result.

    trainer = make_trainer(cfg, prepared, spec, run_name=name, storage_path=storage, mlflow_info=info, val=val)
    best = best_checkpoint(trainer.fit())
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray.train
import ray.train.torch

from pipeline.config import Config
from pipeline.data.ingest import build_datasets, data_config
from pipeline.data.manifest import Prepared
from pipeline.train.loop import train_loop_per_worker

MATERIALIZE_BYTES = 2 * 1024**3


def training_datasets(prepared: Prepared, cfg: Config) -> dict[str, Any]:
    """Ray Datasets for training. The unlabeled stream is materialized in the object store when its shards are
    small (under 2 GiB on disk): re-reading Parquet every epoch costs seconds of fixed overhead per epoch on a
    small cluster, while large data sets keep streaming."""
    ds = build_datasets(
        prepared,
        seed=cfg.train.seed,
        with_val=False,
        preserve_order=cfg.ingest.preserve_order,
        spread_reads=cfg.ingest.spread_reads,
    )
    size = sum(f.stat().st_size for f in prepared.split_dir("unlabeled").glob("*.parquet"))
    if size < MATERIALIZE_BYTES:
        ds["unlabeled"] = ds["unlabeled"].materialize()
    return ds


def make_trainer(
    cfg: Config,
    prepared: Prepared,
    spec: dict[str, Any],
    *,
    run_name: str,
    storage_path: str,
    mlflow_info: dict[str, str] | None,
    val: tuple[np.ndarray, np.ndarray],
    callbacks: list | None = None,
) -> ray.train.torch.TorchTrainer:
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    loop = {
        "config": cfg.to_dict(),
        "prepared": prepared,
        "spec": spec,
        "mlflow": mlflow_info,
        "val": val,
        "failure_marker": os.path.join(storage_path, run_name, ".injected_failure"),
    }
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker=resources,
            placement_strategy=t.placement_strategy,
        ),
        datasets=training_datasets(prepared, cfg),
        dataset_config=data_config(cfg.ingest),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max"
            ),
            callbacks=callbacks or [],
        ),
    )


def best_checkpoint(result):
    """The checkpoint with the best validation score (Ray keeps the best two and the latest)."""
    best = result.best_checkpoints or []
    ckpt = max(best, key=lambda cm: cm[1].get("score", float("-inf")))[0] if best else result.checkpoint
    if ckpt is None:
        raise RuntimeError("training reported no checkpoint")
    return ckpt
