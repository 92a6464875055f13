"""What outlives a step: the learning-rate schedule, the error raised on a non-finite loss, and the checkpoint store
that training in the driver process (Ray Train's local mode, which keeps no checkpoints) writes itself.

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
        self.step, self.checked_at = int(step), int(checked_at)
        super().__init__(f"{where}{nonfinite_message(self.step, self.checked_at)}")


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
