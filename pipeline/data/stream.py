"""The per-worker batch stream of semi-supervised training: for every global step ``k`` a labeled batch, an
unlabeled batch and, for FlowGMM-cons, a second augmentation of the unlabeled rows.

    stream = SSLStream(prepared, ispec, world_size, rank, seed, device, second_view=True)
    for batch in stream.batches(start=0):          # endless; batch.x_lab, y_lab, x_unl, x_unl2
        ...

Two ways to hold the rows, chosen by size:
- **on the device** (the worker's unlabeled rows fit in ``ingest.in_memory_bytes``): the worker's labeled rows and its
  share of the unlabeled rows are pulled once from its Ray Data shard into tensors on the training device (uint8 for
  images), and every batch is a gather by index. Batch ``k`` is a pure function of (seed, rank, k): the unlabeled
  rows of epoch ``e = k // steps_per_epoch`` follow a permutation seeded by (seed, e, rank), the labeled rows an
  endless chain of seeded permutations, and the augmentation a generator seeded by (seed, k, rank). A resumed run
  therefore sees exactly the batches an uninterrupted one would have.
- **streamed** (larger): every epoch iterates the Ray Data shard with prefetching to the device, reshuffled per
  epoch by Ray Data's local shuffle (``ingest.shuffle_buffer``), re-batched to exactly ``unlabeled_batch`` rows;
  a resume skips the batches already taken in its epoch.

Views that the method does not use are never built: ``unlabeled=False`` (the labels-only flow) builds no unlabeled
batch, ``second_view=False`` (plain FlowGMM) no second augmentation.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.config.data import IngestSpec
from pipeline.core.errors import DataError
from pipeline.data.augment import jitter_vectors, translate_images
from pipeline.data.ingest import Step, manifest_of, steps_per_epoch
from pipeline.data.manifest import Prepared
from pipeline.data.shards import load_split

log = logging.getLogger(__name__)


class SSLStream:
    """Per-worker batches for global steps; see the module docstring."""

    def __init__(
        self,
        prepared: Prepared | dict,
        spec: IngestSpec,
        world_size: int,
        rank: int,
        seed: int,
        device: str | torch.device = "cpu",
        *,
        unlabeled: bool = True,
        second_view: bool = True,
        arrays: dict | None = None,
    ):
        m = manifest_of(prepared)
        self.manifest, self.spec = m, spec
        self.world_size, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.device = torch.device(device)
        self.kind, self.shape = m["kind"], tuple(m["shape"])
        self.steps_per_epoch = steps_per_epoch(m, spec, self.world_size)
        self.unlabeled, self.second_view = unlabeled, second_view and unlabeled and spec.two_views
        std = m.get("feature_std")
        scale = np.asarray(std, np.float32) * spec.noise_std if (self.kind == "vector" and std is not None) else None
        self._noise_scale = torch.as_tensor(scale if scale is not None else spec.noise_std, device=self.device)
        self.stats = {"recycled_steps": 0}
        self._source = _ArraySource(arrays, self) if arrays is not None else _ShardSource(self)
        self.on_device = self._source.fits()
        self._lab: tuple[torch.Tensor, torch.Tensor] | None = None
        self._unl: torch.Tensor | None = None
        self._perms: dict[tuple[str, int], torch.Tensor] = {}

    @classmethod
    def in_memory(
        cls,
        prepared: Prepared | dict,
        spec: IngestSpec,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        arrays: dict | None = None,
        **views: bool,
    ) -> "SSLStream":
        """No Ray: rows from ``load_split`` (or ``arrays`` = {x_lab, y_lab, x_unl} numpy/tensors); this rank takes
        every ``world_size``-th unlabeled row. Same batches, shapes and augmentation as the Ray path."""
        if arrays is None:
            xl, yl = load_split(prepared, "labeled")
            xu, _ = load_split(prepared, "unlabeled")
            arrays = {"x_lab": xl, "y_lab": yl, "x_unl": xu}
        return cls(prepared, spec, world_size, rank, seed, device, arrays=arrays, **views)

    # -- the public iterators
    def batches(self, start: int = 0) -> Iterator[Step]:
        """Endless batches for global steps ``start, start + 1, ...``."""
        if self.on_device:
            k = start
            while True:
                yield self.batch(k)
                k += 1
        yield from self._streamed(start)

    def epoch(self, epoch: int) -> Iterator[Step]:
        """The ``steps_per_epoch`` batches of one epoch."""
        it = self.batches(epoch * self.steps_per_epoch)
        for _ in range(self.steps_per_epoch):
            yield next(it)

    def batch(self, k: int) -> Step:
        """Batch ``k`` from the rows held on the device (a pure function of seed, rank and k)."""
        self._load()
        xl, yl = self._lab
        idx = self._labeled_index(k)
        g = self._generator(k)
        xu = None
        if self.unlabeled:
            epoch, offset = divmod(k, self.steps_per_epoch)
            B = self.spec.unlabeled_batch
            xu = self._unl[self._perm("unl", epoch, len(self._unl))[offset * B : (offset + 1) * B]]
        return self._make_step(xl[idx], yl[idx], xu, g)

    # -- rows on the device
    def _load(self) -> None:
        if self._lab is None:
            xl, yl = self._source.labeled()
            if len(yl) == 0:
                raise DataError("<ingest>: empty split 'labeled'")
            self._lab = (xl.to(self.device), yl.to(torch.int64).to(self.device))
            if self.unlabeled:
                self._unl = self._source.unlabeled_rows().to(self.device)
                need = self.steps_per_epoch * self.spec.unlabeled_batch
                if len(self._unl) < need:
                    raise DataError(f"<ingest>: rank {self.rank} holds {len(self._unl)} unlabeled rows, needs {need}")

    def _perm(self, kind: str, i: int, n: int) -> torch.Tensor:
        key = (kind, i)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            stream = {"unl": 21, "lab": 11}[kind]
            g = torch.Generator(device=self._gen_device()).manual_seed(_seed(self.seed, i, self.rank, stream))
            self._perms[key] = torch.randperm(n, generator=g, device=self._gen_device()).to(self.device)
        return self._perms[key]

    def _labeled_index(self, k: int) -> torch.Tensor:
        """Rows ``[k B, (k + 1) B)`` of the endless chain of seeded permutations of the labeled set."""
        n, B = len(self._lab[1]), self.spec.labeled_batch
        start, parts = k * B, []
        while B > 0:
            j, off = divmod(start, n)
            take = min(B, n - off)
            parts.append(self._perm("lab", j, n)[off : off + take])
            start, B = start + take, B - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _gen_device(self) -> str:
        return "cpu" if self.device.type == "mps" else self.device.type

    def _generator(self, k: int) -> torch.Generator:
        return torch.Generator(device=self._gen_device()).manual_seed(_seed(self.seed, k, self.rank, 31))

    # -- streamed rows
    def _streamed(self, start: int) -> Iterator[Step]:
        self._load_labeled_only()
        epoch, skip = divmod(start, self.steps_per_epoch)
        k = start
        while True:
            for xu in self._stream_epoch(epoch, skip):
                xl, yl = self._lab
                yield self._make_step(*(t[self._labeled_index(k)] for t in (xl, yl)), xu, self._generator(k))
                k += 1
            epoch, skip = epoch + 1, 0

    def _load_labeled_only(self) -> None:
        if self._lab is None:
            xl, yl = self._source.labeled()
            self._lab = (xl.to(self.device), yl.to(torch.int64).to(self.device))

    def _stream_epoch(self, epoch: int, skip: int) -> Iterator[torch.Tensor | None]:
        """Exactly ``steps_per_epoch - skip`` unlabeled batches; the shard is always drained to its end (a rank
        that stops early would block the others at the next epoch)."""
        steps, done, last = self.steps_per_epoch, 0, None
        if not self.unlabeled:
            for _ in range(steps - skip):
                yield None
            return
        for i, xu in enumerate(_exact_batches(self._source.unlabeled_epoch(epoch), self.spec.unlabeled_batch)):
            if i < skip or done >= steps - skip:
                continue  # resumed mid-epoch, or draining
            last = xu
            done += 1
            yield xu
        while done < steps - skip:  # the stream came up short (should not happen with equal splits): reuse rows
            if last is None:
                raise DataError(f"<ingest>: rank {self.rank} received no unlabeled rows in epoch {epoch}")
            self.stats["recycled_steps"] += 1
            log.warning("rank %d: unlabeled stream short in epoch %d; reusing the last batch", self.rank, epoch)
            done += 1
            yield last

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

    def _make_step(self, xl_raw, yl, xu_raw, g: torch.Generator) -> Step:
        xl0 = self._to_x(xl_raw)
        xl = self._augment(xl0, g) if self.spec.augment_labeled else xl0
        yl = yl.to(self.device, non_blocking=True).to(torch.int64)
        x1 = x2 = xl2 = None
        if xu_raw is not None:
            xu = self._to_x(xu_raw)
            x1 = self._augment(xu, g)
            if self.second_view:
                x2 = self._augment(xu, g) if self.spec.augment else x1
                xl2 = self._augment(xl0, g) if self.spec.augment else xl
        return Step(xl, yl, x1, x2, xl2)


class _ShardSource:
    """Rows from this worker's Ray Data shards (``ray.train.get_dataset_shard``)."""

    def __init__(self, stream: SSLStream):
        import ray.train

        self.s = stream
        self.unl = ray.train.get_dataset_shard("unlabeled")
        self.lab = ray.train.get_dataset_shard("labeled")
        if self.unl is None or self.lab is None:
            raise DataError(
                "<ingest>: the trainer has no 'labeled'/'unlabeled' datasets (pass datasets=build_datasets(prepared))"
            )

    def fits(self) -> bool:
        return _fits(self.s)

    def labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, ids = [], [], []
        for b in self.lab.iter_torch_batches(
            batch_size=4096, device="cpu", prefetch_batches=self.s.spec.prefetch_batches
        ):
            xs.append(b["x"]), ys.append(b["y"]), ids.append(b["id"])
        order = torch.argsort(torch.cat(ids))  # a stable order whatever the block order
        return torch.cat(xs)[order], torch.cat(ys)[order]

    def unlabeled_rows(self) -> torch.Tensor:
        """The whole shard once (one pass over the Ray Data stream), straight to the training device."""
        return torch.cat(list(self._iter(device=self.s.device)))

    def unlabeled_epoch(self, epoch: int) -> Iterable[torch.Tensor]:
        spec = self.s.spec
        shuffle = (
            {
                "local_shuffle_buffer_size": spec.shuffle_buffer,
                "local_shuffle_seed": _seed(self.s.seed, epoch, self.s.rank, 23),
            }
            if spec.shuffle_buffer > 0
            else {}
        )
        return self._iter(device=self.s.device, **shuffle)

    def _iter(self, **kw) -> Iterator[torch.Tensor]:
        for b in self.unl.iter_torch_batches(
            batch_size=self.s.spec.read_batch, drop_last=False, prefetch_batches=self.s.spec.prefetch_batches, **kw
        ):
            yield b["x"]


class _ArraySource:
    """Rows held by the caller (tests, benchmarks): this rank takes every ``world_size``-th unlabeled row."""

    def __init__(self, arrays: dict, stream: SSLStream):
        d = int(np.prod(stream.shape))
        t = {k: v if torch.is_tensor(v) else torch.from_numpy(np.array(v)) for k, v in arrays.items()}
        self.x_lab, self.y_lab = t["x_lab"].reshape(len(t["x_lab"]), d), t["y_lab"]
        self.x_unl = t["x_unl"].reshape(len(t["x_unl"]), d)[stream.rank :: stream.world_size]
        self.s = stream

    def fits(self) -> bool:
        return _fits(self.s)

    def labeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_lab, self.y_lab

    def unlabeled_rows(self) -> torch.Tensor:
        return self.x_unl

    def unlabeled_epoch(self, epoch: int) -> Iterable[torch.Tensor]:
        g = torch.Generator().manual_seed(_seed(self.s.seed, epoch, self.s.rank, 21))
        perm = torch.randperm(len(self.x_unl), generator=g)
        bs = self.s.spec.read_batch
        return (self.x_unl[perm[i : i + bs]] for i in range(0, len(perm), bs))


def _fits(s: SSLStream) -> bool:
    """Whether this worker's unlabeled rows fit in ``ingest.in_memory_bytes``."""
    row_bytes = int(np.prod(s.shape)) * (1 if s.kind == "image" else 4)
    return int(s.manifest["counts"]["unlabeled"]) // s.world_size * row_bytes <= s.spec.in_memory_bytes


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
