"""Large batches: the learning rate, warm-up and consistency ramp for ``train.batch_rows`` rows per step, applied
when a configuration is resolved (so the logged configuration holds the values training uses).

The square-root rule is the default (the scaling rule for Adam-type optimizers; Malladi et al., 2022),
``rule="linear"`` the linear rule (Goyal et al., 2017).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def scaled_lr(base_lr: float, batch: int, base_batch: int, rule: str = "sqrt") -> float:
    """The learning rate for ``batch`` rows per step given ``base_lr`` tuned at ``base_batch``.

    ``rule="sqrt"`` (default): ``base_lr * sqrt(batch / base_batch)``, the square-root rule for Adam/AdamW;
    ``rule="linear"``: ``base_lr * batch / base_batch`` (SGD's linear rule; too aggressive for Adam at 8x).
    Pair either with a learning-rate warm-up (``train.warmup_steps``).

        >>> scaled_lr(1e-3, 2048, 256)
        0.0028284271247461905
    """
    if batch <= 0 or base_batch <= 0:
        raise ValueError("batch sizes must be positive")
    ratio = batch / base_batch
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "linear":
        return base_lr * ratio
    raise ValueError(f"rule must be 'sqrt' or 'linear', got {rule!r}")


def large_batch(cfg: Any, rows: int, rule: str = "sqrt") -> Any:
    """A copy of ``cfg`` (a :class:`~pipeline.config.Config`) training with ``rows`` = labeled + unlabeled rows per
    step per worker, in the configuration's labeled:unlabeled ratio. The learning rate follows :func:`scaled_lr`;
    ``warmup_steps`` and ``consistency_ramp_steps`` shrink by the same factor as the batch grows, so that they
    still span the same number of examples. Example: ``mnist`` (64 + 192 at lr 1e-3) at 2048 rows is 512 + 1536
    at lr 2.83e-3, warm-up 25 steps, consistency ramp 250 steps."""
    ing, t = cfg.ingest, cfg.train
    base = ing.labeled_batch + ing.unlabeled_batch
    if rows < 2:
        raise ValueError("rows must be at least 2")
    n_lab = max(1, round(rows * ing.labeled_batch / base))
    factor = rows / base
    ingest = dataclasses.replace(ing, labeled_batch=n_lab, unlabeled_batch=rows - n_lab)
    train = dataclasses.replace(
        t,
        lr=scaled_lr(t.lr, rows, base, rule),
        warmup_steps=max(1, round(t.warmup_steps / factor)) if t.warmup_steps > 0 else t.warmup_steps,
        consistency_ramp_steps=(
            max(1, round(t.consistency_ramp_steps / factor))
            if t.consistency_ramp_steps > 0
            else t.consistency_ramp_steps
        ),
    )
    return dataclasses.replace(cfg, ingest=ingest, train=train)


def apply_batch_rows(cfg: Any) -> Any:
    """``cfg`` at ``train.batch_rows`` rows per step (unchanged when it is 0). Idempotent: a configuration already at
    that batch size keeps its learning rate."""
    rows, ing = cfg.train.batch_rows, cfg.ingest
    if None in (ing.labeled_batch, ing.unlabeled_batch, cfg.train.warmup_steps, cfg.train.consistency_ramp_steps):
        return cfg  # sized from the data first: pipeline.train.budget applies it then
    if rows <= 0 or rows == ing.labeled_batch + ing.unlabeled_batch:
        return cfg
    return large_batch(cfg, rows)
