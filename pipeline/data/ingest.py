"""Ray Data ingest for semi-supervised training.

Driver side::

    prepared = prepare(DataSpec(...), home)
    datasets = build_datasets(prepared, seed=cfg.seed)        # labeled (materialized), unlabeled (streaming), val
    TorchTrainer(loop, datasets=datasets, dataset_config=data_config(ispec),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}), ...)

Worker side::

    stream = SSLStream(prepared_or_manifest, ispec, world_size, rank, seed, device)
    for epoch in range(E):
        for step in stream.epoch(epoch):      # exactly stream.steps_per_epoch steps on every worker
            step.x_lab, step.y_lab, step.x_unl, step.x_unl2

The unlabeled stream is split across workers (``streaming_split(equal=True)``) and defines the epoch:
``steps_per_epoch = (N_unlabeled // world_size) // unlabeled_batch``. The labeled set is cycled on every worker:
``labeled_mode="replicate"`` gives every worker the whole (materialized) labeled set, read once into worker
memory and reshuffled per epoch with a seeded generator; ``"split"`` splits it across workers too and
re-iterates the Ray Data shard whenever it runs out (all ranks restart in lockstep because they consume the same
number of batches).

Augmentation (random translation for images, Gaussian noise scaled by ``feature_std`` for vectors) runs on the
worker, on whole batches in torch, after the batch is on the device: the uint8 rows cross the object store once,
and the two views cost two vectorized gathers (cheaper than doubling the rows in a Ray Data map).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from pipeline.core.errors import DataError
from pipeline.data.augment import jitter_vectors, translate_images
from pipeline.data.manifest import Prepared
from pipeline.data.shards import load_split

log = logging.getLogger(__name__)


@dataclass
class IngestSpec:
    labeled_batch: int = 32
    unlabeled_batch: int = 32
    two_views: bool = True
    augment: bool = True
    translate: int = 2  # pixels (images)
    pad_mode: str = "reflect"  # "reflect" | "zero" (images)
    noise_std: float = 0.05  # vectors, in standardized units (multiplied by feature_std)
    augment_labeled: bool = True  # also augment the labeled batch (one view)
    labeled_mode: str = "replicate"  # or "split"
    prefetch_batches: int = 2
    preserve_order: bool = True  # deterministic block order and split assignment (Ray Data)
    read_batch: int = 1024  # rows per Ray Data batch pulled from the stream (re-batched locally)
    # rows reshuffled per epoch on each worker (Ray Data's local shuffle, seeded by seed/epoch/rank; 0 = off): a
    # materialized unlabeled set is the same blocks in the same order every epoch (the file shuffle acts on reads)
    shuffle_buffer: int = 4096
    # one Ray worker process per Parquet read task: Ray reuses a worker's lease for the next task of the same kind,
    # so short reads pile onto one node despite Ray Data's SPREAD placement; with this they spread over the nodes
    # (sharing the read bandwidth of a cluster) at the cost of a worker start (~1 s) per read task
    spread_reads: bool = False


@dataclass
class Step:
    x_lab: torch.Tensor
    y_lab: torch.Tensor
    x_unl: torch.Tensor
    x_unl2: torch.Tensor | None


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


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _exact_batches(tensors: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Re-batch a stream of row blocks into batches of exactly ``size`` rows; the remainder is dropped."""
    buf: list[torch.Tensor] = []
    n = 0
    for t in tensors:
        if len(t) == 0:
            continue
        buf.append(t)
        n += len(t)
        while n >= size:
            cat = buf[0] if len(buf) == 1 else torch.cat(buf)
            yield cat[:size]
            rest = cat[size:]
            buf, n = ([rest] if len(rest) else []), len(rest)


# ----------------------------------------------------------------------------------------------- worker side
class SSLStream:
    """Per-worker iterator over (labeled, unlabeled[, second view]) batches; see the module docstring."""

    def __init__(
        self,
        prepared: Prepared | dict,
        spec: IngestSpec,
        world_size: int,
        rank: int,
        seed: int,
        device: str | torch.device = "cpu",
        *,
        _arrays: dict | None = None,
    ):
        m = manifest_of(prepared)
        self.manifest = m
        self.spec = spec
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.kind = m["kind"]
        self.shape = tuple(m["shape"])
        self.steps_per_epoch = steps_per_epoch(m, spec, self.world_size)
        std = m.get("feature_std")
        self._noise_scale = (
            torch.as_tensor(np.asarray(std, np.float32) * spec.noise_std, device=self.device)
            if (self.kind == "vector" and std is not None)
            else torch.tensor(spec.noise_std, device=self.device)
        )
        self._arrays = _arrays
        self._lab_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._lab_split_iter: Iterator | None = None
        self.stats = {"recycled_steps": 0}
        if _arrays is None:
            import ray.train

            self._unl_shard = ray.train.get_dataset_shard("unlabeled")
            self._lab_shard = ray.train.get_dataset_shard("labeled")
            if self._unl_shard is None or self._lab_shard is None:
                raise DataError(
                    "<ingest>: the trainer has no 'labeled'/'unlabeled' datasets "
                    "(pass datasets=build_datasets(prepared))"
                )

    @classmethod
    def in_memory(
        cls,
        prepared: Prepared,
        spec: IngestSpec,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        arrays: dict | None = None,
    ) -> "SSLStream":
        """No Ray: rows from ``load_split`` (or ``arrays`` = {x_lab, y_lab, x_unl} numpy/tensors) held in memory.
        Same steps, batch shapes and augmentation as the Ray path; the unlabeled rows are permuted per epoch and
        dealt round-robin to ranks."""
        if arrays is None:
            xl, yl = load_split(prepared, "labeled")
            xu, _ = load_split(prepared, "unlabeled")
            arrays = {"x_lab": xl, "y_lab": yl, "x_unl": xu}
        arrays = {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v) for k, v in arrays.items()}
        d = int(np.prod(manifest_of(prepared)["shape"]))
        arrays = {k: (v.reshape(len(v), d) if k.startswith("x") else v) for k, v in arrays.items()}
        return cls(prepared, spec, world_size, rank, seed, device, _arrays=arrays)

    # -- rows to model tensors
    def _to_x(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.kind == "image":
            return t.reshape(len(t), *self.shape).to(torch.float32).div_(255.0)
        return t.to(torch.float32).reshape(len(t), *self.shape)

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.spec.augment:
            return x
        if self.kind == "image":
            return translate_images(x, self.spec.translate, gen, self.spec.pad_mode)
        return jitter_vectors(x, self._noise_scale, gen)

    def _generator(self, epoch: int, stream: int) -> torch.Generator:
        g = torch.Generator(device=self.device if self.device.type != "mps" else "cpu")
        g.manual_seed(_seed(self.seed, epoch, self.rank, stream))
        return g

    # -- labeled
    def _labeled_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._lab_cache is None:
            if self._arrays is not None:
                xl, yl = self._arrays["x_lab"], self._arrays["y_lab"]
            else:
                xs, ys, ids = [], [], []
                for b in self._lab_shard.iter_torch_batches(
                    batch_size=4096, device="cpu", prefetch_batches=self.spec.prefetch_batches
                ):
                    xs.append(b["x"]), ys.append(b["y"])
                    ids.append(b["id"])
                order = torch.argsort(torch.cat(ids))  # a stable order whatever the block order
                xl, yl = torch.cat(xs)[order], torch.cat(ys)[order]
            xl = xl.to(self.device)
            yl = yl.to(torch.int64).to(self.device)
            self._lab_cache = (xl, yl)
        return self._lab_cache

    def _labeled_replicated(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        xl, yl = self._labeled_all()
        n = len(yl)
        if n == 0:
            raise DataError("<ingest>: empty split 'labeled'")
        g = torch.Generator().manual_seed(_seed(self.seed, epoch, self.rank, 11))
        B = self.spec.labeled_batch
        pending = torch.zeros(0, dtype=torch.int64)
        while True:
            while len(pending) < B:
                pending = torch.cat([pending, torch.randperm(n, generator=g)])
            idx, pending = pending[:B].to(xl.device), pending[B:]
            yield xl[idx], yl[idx]

    def _labeled_split(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # one persistent cycle across epochs: every rank restarts the split shard at the same step
        while True:
            got = 0
            for b in self._lab_shard.iter_torch_batches(
                batch_size=self.spec.labeled_batch,
                drop_last=True,
                device="cpu",
                prefetch_batches=self.spec.prefetch_batches,
            ):
                got += 1
                yield b["x"], b["y"].to(torch.int64)
            if got == 0:
                raise DataError("<ingest>: labeled shard yielded no full batch (too few labeled rows per worker)")

    # -- unlabeled
    def _unlabeled_blocks(self, epoch: int) -> Iterator[torch.Tensor]:
        if self._arrays is not None:
            xu = self._arrays["x_unl"]
            n = len(xu)
            per = n // self.world_size
            g = torch.Generator().manual_seed(_seed(self.seed, epoch, 0, 21))  # same permutation on all ranks
            perm = torch.randperm(n, generator=g)[self.rank :: self.world_size][:per]
            bs = self.spec.read_batch
            for s in range(0, per, bs):
                yield xu[perm[s : s + bs]]
            return
        shuffle = (
            {
                "local_shuffle_buffer_size": self.spec.shuffle_buffer,
                "local_shuffle_seed": _seed(self.seed, epoch, self.rank, 23),
            }
            if self.spec.shuffle_buffer > 0
            else {}
        )
        for b in self._unl_shard.iter_torch_batches(
            batch_size=self.spec.read_batch,
            drop_last=False,
            device="cpu",
            prefetch_batches=self.spec.prefetch_batches,
            **shuffle,
        ):
            yield b["x"]

    # -- the epoch
    def epoch(self, epoch: int) -> Iterator[Step]:
        """Exactly ``steps_per_epoch`` steps. Consume it to the end: the split stream must be drained on every
        rank (a rank that stops early blocks the others at the next epoch)."""
        steps = self.steps_per_epoch
        B = self.spec.unlabeled_batch
        g_aug = self._generator(epoch, 31)
        if self.spec.labeled_mode == "split" and self._arrays is None:
            if self._lab_split_iter is None:
                self._lab_split_iter = self._labeled_split()
            lab_iter = self._lab_split_iter
        else:
            lab_iter = self._labeled_replicated(epoch)
        done = 0
        last = None
        for xu in _exact_batches(self._unlabeled_blocks(epoch), B):
            if done >= steps:
                continue  # drain: every rank must consume its whole split
            last = xu
            yield self._make_step(next(lab_iter), xu, g_aug)
            done += 1
        while done < steps:  # the stream came up short (should not happen with equal splits): reuse rows
            if last is None:
                raise DataError(f"<ingest>: rank {self.rank} received no unlabeled rows in epoch {epoch}")
            self.stats["recycled_steps"] += 1
            log.warning(
                "rank %d: unlabeled stream short by %d steps in epoch %d; reusing the last batch",
                self.rank,
                steps - done,
                epoch,
            )
            yield self._make_step(next(lab_iter), last, g_aug)
            done += 1

    def _make_step(self, lab: tuple[torch.Tensor, torch.Tensor], xu_raw: torch.Tensor, g: torch.Generator) -> Step:
        xl = self._to_x(lab[0])
        if self.spec.augment_labeled:
            xl = self._augment(xl, g)
        yl = lab[1].to(self.device, non_blocking=True).to(torch.int64)
        xu = self._to_x(xu_raw)
        x1 = self._augment(xu, g)
        x2 = None
        if self.spec.two_views:
            x2 = self._augment(xu, g) if self.spec.augment else x1
        return Step(xl, yl, x1, x2)
