"""What outlives a step: the learning-rate schedule, the error raised on a non-finite loss, stopping on validation,
and where checkpoints go (:class:`Checkpoints`: the one place where training in the driver process, Ray Train's local
mode, which keeps no checkpoints, differs from training on Ray Train workers).

A checkpoint directory holds ``spec.json`` + ``weights.pt`` (the model, loadable by ``flowgmm.spec.load``) and
``train_state.pt`` (optimizer, schedule, step, best score, and every rank's random generators: ``rng`` is a list
indexed by rank of ``{"cpu": ByteTensor, "cuda": ByteTensor | None}``).

Each rank draws its own random numbers (the dequantization noise): its generators are seeded from
``rank_seed(seed, rank, step)``, saved per rank and restored per rank, so a restarted run continues every rank's
stream where it stopped; when the world size changed, each rank is reseeded from (seed, rank, restored step).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from pipeline.config import Config

STATE_FILE = "train_state.pt"
INDEX_FILE = "checkpoints.json"


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite; the message names the step and what to try. Deterministic: the driver
    raises it from the loop's return value, never as a worker failure that Ray Train would retry."""

    def __init__(self, step: int, checked_at: int, where: str = ""):
        self.step, self.checked_at, self.where = int(step), int(checked_at), where
        super().__init__(f"{where}{nonfinite_message(self.step, self.checked_at)}")

    def __reduce__(self):  # copied and pickled whole (Ray Tune copies a trial's error)
        return (type(self), (self.step, self.checked_at, self.where))


def nonfinite_message(step: int, checked_at: int) -> str:
    return (
        f"non-finite training loss at step {step} (checked at step {checked_at}); "
        "try a lower train.lr or train.grad_clip, or train.bf16=false"
    )


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A 63-bit seed for one rank's torch generators (CPU and CUDA), from numpy's SeedSequence over
    (seed, rank, step): distinct ranks and distinct steps give independent streams.

    >>> rank_seed(0, 0) == rank_seed(0, 0), rank_seed(0, 0) != rank_seed(0, 1), rank_seed(0, 1) != rank_seed(0, 1, 5)
    (True, True, True)
    """
    import numpy as np

    state = np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def lr_lambda(cfg: Config, total_steps: int):
    """Linear warm-up, then cosine decay to 1% of the learning rate at ``total_steps`` (or constant)."""
    warm, kind = max(cfg.train.warmup_steps, 0), cfg.train.lr_schedule

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class CheckpointStore:
    """Checkpoints under ``root`` (a path or a URI pyarrow understands, e.g. ``s3://bucket/runs/name``) as
    ``checkpoint_<step>`` directories plus an index; keeps the ``keep`` best by score and the latest.

        store = CheckpointStore("/home/u/.flowgmm/ray_results/digits-1")
        store.save(local_dir, step=200, score=0.91)      # copied in; returns the checkpoint's path
        store.best(), store.latest()                      # paths, or None
    """

    def __init__(self, root: str, keep: int = 2):
        import pyarrow.fs as pafs

        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.keep = keep

    def entries(self) -> list[dict[str, Any]]:
        try:
            with self.fs.open_input_stream(f"{self.root}/{INDEX_FILE}") as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, ValueError):
            return []

    def save(self, local_dir: str, step: int, score: float) -> str:
        import pyarrow.fs as pafs

        path = f"{self.root}/checkpoint_{step:08d}"
        self.fs.create_dir(path, recursive=True)
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        entries = [e for e in self.entries() if e["step"] != step] + [{"step": step, "score": score, "path": path}]
        keep = {e["path"] for e in sorted(entries, key=lambda e: -e["score"])[: self.keep]}
        keep.add(max(entries, key=lambda e: e["step"])["path"])
        for e in entries:
            if e["path"] not in keep:
                self.fs.delete_dir(e["path"])
        self._write_index([e for e in entries if e["path"] in keep])
        return path

    def best(self) -> str | None:
        entries = self.entries()
        return max(entries, key=lambda e: (e["score"], e["step"]))["path"] if entries else None

    def latest(self) -> str | None:
        entries = self.entries()
        return max(entries, key=lambda e: e["step"])["path"] if entries else None

    def checkpoint(self, path: str):
        import ray.train

        return ray.train.Checkpoint(path, filesystem=self.fs)

    def _write_index(self, entries: list[dict[str, Any]]) -> None:
        data = json.dumps(sorted(entries, key=lambda e: e["step"]), indent=1).encode()
        tmp = f"{self.root}/.{INDEX_FILE}.{os.getpid()}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, f"{self.root}/{INDEX_FILE}")


class ValidationStop:
    """Stopping on validation: the selection score smoothed over evaluation points (an exponential moving average,
    weight ``smoothing`` on the past), stop once it has not improved for ``patience`` evaluation points, never
    before ``min_steps``; ``patience = 0`` never stops early.

        >>> stop = ValidationStop(patience=2, min_steps=0, smoothing=0.0)
        >>> [stop.update(step, s) for step, s in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.7), (5, 0.65)]]
        [False, False, False, True, True]
    """

    def __init__(self, patience: int, min_steps: int, smoothing: float = 0.5):
        self.patience, self.min_steps, self.smoothing = int(patience), int(min_steps), float(smoothing)
        self.smoothed: float | None = None
        self.best = -math.inf
        self.since_best = 0

    def update(self, step: int, score: float) -> bool:
        """Record the score at ``step``; True when training should stop here."""
        s = score if self.smoothed is None else self.smoothing * self.smoothed + (1 - self.smoothing) * score
        self.smoothed = s
        if s > self.best + 1e-6:
            self.best, self.since_best = s, 0
        else:
            self.since_best += 1
        return self.stopped(step)

    def stopped(self, step: int) -> bool:
        """Whether the scores recorded so far stop training at ``step`` (a resumed run that had stopped)."""
        return self.patience > 0 and step >= self.min_steps and self.since_best >= self.patience

    def state(self) -> dict[str, float]:
        return {"smoothed": self.smoothed, "best": self.best, "since_best": self.since_best}

    def load(self, st: dict[str, Any] | None) -> None:
        if st:
            self.smoothed, self.best, self.since_best = st["smoothed"], float(st["best"]), int(st["since_best"])


class Checkpoints:
    """Where a run's checkpoints go, and the only place where training in the driver differs from training on Ray
    Train workers. On workers, Ray Train keeps the reported checkpoints (the best two by score and the latest) and
    hands a restarted worker group the latest; in the driver (``train.num_workers = 0``) Ray's local mode keeps only
    a reference to the reported directory, so the run persists each checkpoint in a :class:`CheckpointStore` under
    ``root`` first, and ``--resume`` restarts from its latest.

        ckpts = Checkpoints(root, local=True, resume=False)
        ckpts.restore()                        # the checkpoint to continue from, or None
        ckpts.report(metrics, directory)      # on rank 0 with a directory, elsewhere with None
        ckpts.chosen(result, "last")          # after fit(): (evaluated checkpoint, latest checkpoint)
    """

    def __init__(self, root: str, *, local: bool, resume: bool = False):
        self.root, self.local, self.resume = root, local, resume
        self.store = CheckpointStore(root) if local else None

    def restore(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # a restarted Ray Train worker group
        if checkpoint is None and self.store is not None and self.resume:
            latest = self.store.latest()
            checkpoint = self.store.checkpoint(latest) if latest else None
        return checkpoint

    def report(self, metrics: dict[str, Any], directory: str | None) -> None:
        """``ray.train.report`` with the checkpoint in ``directory`` (None: metrics only)."""
        import ray.train

        ckpt = None
        if directory is not None:
            if self.store is not None:  # local mode: Ray keeps only a reference, so persist it first
                path = self.store.save(directory, int(metrics["step"]), metrics.get("score", 0.0))
                ckpt = self.store.checkpoint(path)
            else:
                ckpt = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=ckpt)

    def chosen(self, result, pick: str):
        """(the checkpoint evaluated and served: the last step's or the best score's, the last step's)."""
        if self.store is not None:
            best, latest = self.store.best(), self.store.latest()
            if best is None or latest is None:
                raise RuntimeError("training reported no checkpoint")
            return self.store.checkpoint(best if pick == "best" else latest), self.store.checkpoint(latest)
        if result.checkpoint is None:
            raise RuntimeError("training reported no checkpoint")
        if pick != "best" or not result.best_checkpoints:
            return result.checkpoint, result.checkpoint
        best = max(result.best_checkpoints, key=lambda cm: cm[1].get("score", float("-inf")))[0]
        return best, result.checkpoint
