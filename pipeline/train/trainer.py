"""The driver side of training: the Ray Datasets a run trains on, the ``TorchTrainer`` that runs the per-worker
loop, and the best checkpoint of the result.

    run = TrainRun(cfg, prepared, spec, run_name=name, storage_path=storage, mlflow_info=info, val=val)
    trained = run.fit()                   # trained.chosen (a Checkpoint), trained.metrics, trained.seconds
                                          # NonFiniteLossError when the loss went NaN/inf (never retried)

``train.num_workers = 0`` trains in the driver process (Ray Train's local mode: no worker group to start, ~20-40 s
saved on a small machine); the loop then keeps its checkpoints itself (``CheckpointStore`` under
``<storage>/<run name>``), and ``--resume`` continues from the latest. With one or more workers Ray Train runs
the loop data-parallel (DDP), keeps the best two checkpoints and restarts failed worker groups.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import ray.train
import ray.train.torch

from pipeline.config import Config
from pipeline.data.ingest import build_datasets, data_config
from pipeline.data.manifest import Prepared
from pipeline.train.budget import size_to_data
from pipeline.train.loop import LoopInputs, train_loop_per_worker
from pipeline.train.state import Checkpoints, NonFiniteLossError

MATERIALIZE_BYTES = 2 * 1024**3


@dataclass
class Trained:
    chosen: Any  # ray.train.Checkpoint evaluated and served: the last step's or the best score's (eval.checkpoint)
    metrics: dict[str, Any]  # the last report
    seconds: float  # fit() wall time, worker start-up included
    latest: Any = None  # ray.train.Checkpoint of the last step


def reads_files(prepared: Prepared, cfg: Config) -> bool:
    """Whether training reads its rows straight from the prepared Parquet files instead of through Ray Data: in the
    driver (``train.num_workers = 0``) when the unlabeled rows fit on its device (``ingest.in_memory_bytes``). Ray
    Data's planning and pull cost ~3.5 s of a small job and buy nothing there: one process, one pass over the rows,
    the same batches (:meth:`SSLStream.in_memory`)."""
    row_bytes = prepared.dim * (1 if prepared.kind == "image" else 4)
    return cfg.train.num_workers == 0 and prepared.counts["unlabeled"] * row_bytes <= cfg.ingest.in_memory_bytes


def training_datasets(prepared: Prepared, cfg: Config) -> dict[str, Any] | None:
    """Ray Datasets for training (None when it :func:`reads_files`). With Ray Train workers the unlabeled set is
    materialized in the object store when its shards are small (under 2 GiB on disk), before the workers start: read
    tasks need a CPU each, and workers that hold a node's CPUs (1-CPU nodes with SPREAD placement) would otherwise
    leave them none, and re-reading Parquet every epoch of a streamed set costs seconds. Training in the driver on
    rows that do not fit on its device streams them."""
    if reads_files(prepared, cfg):
        return None
    ds = build_datasets(
        prepared,
        seed=cfg.train.seed,
        with_val=False,
        preserve_order=cfg.ingest.preserve_order,
        spread_reads=cfg.ingest.spread_reads,
    )
    size = sum(f.stat().st_size for f in prepared.split_dir("unlabeled").glob("*.parquet"))
    if size < MATERIALIZE_BYTES and cfg.train.num_workers > 0:
        ds["unlabeled"] = ds["unlabeled"].materialize()
    return ds


class TrainRun:
    """One training run of ``cfg`` on ``prepared``: its trainer and where its checkpoints go."""

    def __init__(
        self,
        cfg: Config,
        prepared: Prepared,
        spec: dict[str, Any],
        *,
        run_name: str,
        storage_path: str,
        mlflow_info: dict[str, str] | None,
        val: tuple[np.ndarray, np.ndarray],
        callbacks: list | None = None,
        label: str = "train",
        progress: bool = True,
        resume: bool = False,
        verbose: bool = False,
        compile_cache: str | None = None,
        cores: Callable[[], int] | None = None,
    ):
        cfg = size_to_data(cfg, prepared)  # a no-op when the caller sized it already (the job does, to log it)
        self.cfg, self.run_name, self.storage_path = cfg, run_name, storage_path
        root = f"{storage_path.rstrip('/')}/{run_name}"
        self.checkpoints = Checkpoints(root, local=cfg.train.num_workers == 0, resume=resume)
        self.inputs = LoopInputs(
            config=cfg.to_dict(),
            prepared=prepared,
            spec=spec,
            val=val,
            checkpoints=root,
            label=label,
            progress=progress,
            mlflow=mlflow_info,
            resume=resume,
            verbose=verbose,
            compile_cache=compile_cache,
            from_files=reads_files(prepared, cfg),
            failure_marker=os.path.join(storage_path, run_name, ".injected_failure"),
            cores=cores,
        )
        self.trainer = self._trainer(prepared, callbacks or [])

    def _trainer(self, prepared: Prepared, callbacks: list) -> ray.train.torch.TorchTrainer:
        t = self.cfg.train
        resources = {"CPU": t.cpus_per_worker}
        if t.use_gpu:
            resources["GPU"] = t.gpus_per_worker
        return ray.train.torch.TorchTrainer(
            train_loop_per_worker,
            train_loop_config=self.inputs,
            scaling_config=ray.train.ScalingConfig(
                num_workers=t.num_workers,
                use_gpu=t.use_gpu,
                resources_per_worker=resources,
                placement_strategy=t.placement_strategy,
            ),
            datasets=training_datasets(prepared, self.cfg),
            dataset_config=data_config(self.cfg.ingest),
            run_config=ray.train.RunConfig(
                name=self.run_name,
                storage_path=self.storage_path,
                failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max"
                ),
                callbacks=callbacks,
            ),
        )

    def fit(self) -> Trained:
        t0 = time.time()
        self.inputs.fit_started = t0
        result = self.trainer.fit()
        seconds = time.time() - t0
        bad = getattr(result, "return_value", None) or {}
        if "nonfinite_step" in bad:  # the loop stopped on a NaN/inf loss: deterministic, so not a worker failure
            raise NonFiniteLossError(bad["nonfinite_step"], bad["checked_at"], where=f"run {self.run_name}: ")
        chosen, latest = self.checkpoints.chosen(result, self.cfg.eval.checkpoint)
        return Trained(chosen, dict(result.metrics or {}), seconds, latest)
