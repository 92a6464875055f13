"""Ray Data ingest for semi-supervised training.

Driver side::

    prepared = prepare(DataSpec(...), home)
    datasets = build_datasets(prepared, seed=cfg.seed)        # labeled (materialized), unlabeled (streaming), val
    TorchTrainer(loop, datasets=datasets, dataset_config=data_config(ispec),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}), ...)

Worker side: :class:`pipeline.data.stream.SSLStream` (rows on the training device when they fit, else streamed).

The unlabeled stream is split across workers (``streaming_split(equal=True)``) and defines the epoch:
``steps_per_epoch = (N_unlabeled // world_size) // unlabeled_batch``. The labeled set is cycled on every worker:
``labeled_mode="replicate"`` gives every worker the whole (materialized) labeled set, ``"split"`` splits it too.

Augmentation (random translation for images, Gaussian noise scaled by ``feature_std`` for vectors) runs on the
worker, on whole batches in torch, after the batch is on the device: the uint8 rows cross the object store once,
and the two views cost two vectorized gathers (cheaper than doubling the rows in a Ray Data map).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config.data import IngestSpec
from pipeline.core.errors import DataError
from pipeline.data.manifest import Prepared

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One step's tensors on the training device: labeled rows and labels, unlabeled rows (None for the labels-only
    flow) and the second augmentations (FlowGMM-cons only)."""

    x_lab: torch.Tensor
    y_lab: torch.Tensor
    x_unl: torch.Tensor | None
    x_unl2: torch.Tensor | None
    x_lab2: torch.Tensor | None = None  # the labeled rows' second augmentation (FlowGMM-cons over all rows)


# ----------------------------------------------------------------------------------------------- driver side
def manifest_of(p: Prepared | dict) -> dict:
    return p.manifest if isinstance(p, Prepared) else p


def steps_per_epoch(prepared: Prepared | dict, spec: IngestSpec, world_size: int) -> int:
    """Steps every worker runs per epoch: ``(N_unlabeled // world_size) // unlabeled_batch``."""
    m = manifest_of(prepared)
    n_unl = int(m["counts"]["unlabeled"])
    n_lab = int(m["counts"]["labeled"])
    per_rank = n_unl // world_size
    steps = per_rank // spec.unlabeled_batch
    where = f"{m.get('name', 'data set')}"
    if steps < 1:
        raise DataError(
            f"{where}: split 'unlabeled' has {n_unl} rows, too few for {world_size} workers x "
            f"unlabeled_batch={spec.unlabeled_batch}"
        )
    if spec.labeled_mode == "split" and (n_lab // world_size) < spec.labeled_batch:
        raise DataError(
            f"{where}: split 'labeled' has {n_lab} rows, too few to split across {world_size} workers "
            f"with labeled_batch={spec.labeled_batch} (use labeled_mode='replicate')"
        )
    if spec.labeled_mode not in ("replicate", "split"):
        raise DataError(f"<ingest>: labeled_mode='{spec.labeled_mode}' (use 'replicate' or 'split')")
    return steps


def build_datasets(
    prepared: Prepared,
    seed: int = 0,
    shuffle_files: bool = True,
    with_val: bool = True,
    verify: bool = True,
    preserve_order: bool = True,
    spread_reads: bool = False,
) -> dict[str, Any]:
    """``{"labeled": materialized, "unlabeled": streaming, "val": materialized}`` Ray Datasets.

    The unlabeled read shuffles the order of its shard files every epoch (seeded, reseeded per execution).
    ``preserve_order`` keeps the blocks of every execution (a ``materialize()`` too) in read order rather than in
    the order the read tasks finish, which depends on where they ran: with it, a run's data order is the same on
    one node or on several. ``spread_reads``: see :attr:`IngestSpec.spread_reads`."""
    import ray.data
    from ray.data import FileShuffleConfig

    if verify:
        prepared.verify()  # DataError naming a corrupt/truncated shard, before Ray sees it

    def read(split: str, **kw: Any):
        if spread_reads:
            kw["ray_remote_args"] = {"max_calls": 1}
        ds = ray.data.read_parquet(str(prepared.split_dir(split)), **kw)
        ds.context.execution_options.preserve_order = preserve_order  # the dataset's own copy of the context
        return ds

    lab = read("labeled").select_columns(["id", "x", "y"]).materialize()
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True) if shuffle_files else None
    unl = read("unlabeled", shuffle=shuffle).select_columns(["x"])
    out = {"labeled": lab, "unlabeled": unl}
    if with_val and "val" in prepared.counts:
        out["val"] = read("val").select_columns(["x", "y"]).materialize()
    return out


def data_config(spec: IngestSpec):
    """DataConfig splitting the unlabeled stream (and in split mode the labeled set) across workers."""
    import ray.train

    opts = ray.train.DataConfig.default_ingest_options()
    opts.preserve_order = bool(spec.preserve_order)
    split = ["unlabeled"] + (["labeled"] if spec.labeled_mode == "split" else [])
    return ray.train.DataConfig(datasets_to_split=split, execution_options=opts)
