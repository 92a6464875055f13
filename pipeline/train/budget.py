"""The training budget sized from the data: every schedule, batch and width field a configuration leaves unset
(None) is filled from the prepared data's row counts, feature count and classes, once, before anything trains.
Fields a configuration sets are kept: the shipped experiments set what their measurements chose (their comments say
which), a user's ``train.steps=3000`` is used as given.

    cfg = size_to_data(resolve("table", overrides=["data.path=my.csv"]), prepared)
    cfg.train.steps, cfg.train.patience, cfg.ingest.unlabeled_batch, cfg.model.hidden

The rule (``n_u`` unlabeled rows, ``n_l`` labeled training rows, ``D`` features, ``K`` classes; see
:func:`budget_for`):

- batches: ``unlabeled_batch`` grows with the unlabeled pool (64 rows up to 6.4k rows, 512 rows from 51k rows, a
  power of two between), ``labeled_batch`` is a quarter of it (at least 16, at most the labeled rows);
- steps at most (the ceiling): ``1000 log2(n_u / 125)`` rounded to 100, between 1,000 and 12,000 (500 rows: 2,000;
  30k: 7,900; 300k: 11,200), and at least 20 passes over the labeled rows;
- stopping on validation: ``patience`` = 5 evaluation points without a better smoothed selection score, never
  before ``min_steps`` = 30% of the ceiling, and only with at least 50 validation rows (on fewer, the score is
  noise: the dev tables of 300-800 rows with 6-8 validation rows scored up to 2 points higher trained to the
  ceiling); 20 evaluation points in all (``eval_every``), a progress line at every other one;
- schedule: warm-up 5% of the ceiling (at most 100 steps), FlowGMM-cons' consistency term from 20% of the ceiling,
  ramped over the next 20%;
- the vector flow: 6 couplings, ``hidden = 8 D`` rounded up to 32, between 64 and 256.

>>> b = budget_for(unlabeled=300_000, labeled=640, dim=24, classes=5, val=160)
>>> b["train"]["steps"], b["ingest"]["unlabeled_batch"], b["ingest"]["labeled_batch"], b["model"]["hidden"]
(11200, 512, 128, 192)
>>> b["train"]["patience"], budget_for(unlabeled=400, labeled=30, dim=13, classes=3, val=8)["train"]["patience"]
(5, 0)
>>> budget_for(unlabeled=400, labeled=30, dim=13, classes=3)["train"]["steps"]
1700
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

from pipeline.config import Config
from pipeline.config.scaling import apply_batch_rows
from pipeline.data.manifest import Prepared

MIN_VAL_TO_STOP = 50  # validation rows below which a validation score cannot tell a plateau from noise


def _pow2(x: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, 2 ** round(math.log2(max(x, 1.0))))))


def budget_for(
    *, unlabeled: int, labeled: int, dim: int, classes: int, val: int = 0, steps: int | None = None
) -> dict[str, dict[str, int]]:
    """The sized values per configuration section (``train``, ``ingest``, ``model``) for data of this size
    (``val``: validation rows; fewer than :data:`MIN_VAL_TO_STOP` never stop training early). ``steps``: a length
    the configuration sets, which the schedule then follows."""
    ub = _pow2(unlabeled / 100, 64, 512)
    lb = int(min(max(labeled, 1), max(16, ub // 4)))
    if steps is None:
        steps = 100 * round(10 * math.log2(max(unlabeled, 250) / 125))
        steps = int(min(12_000, max(1_000, steps, 20 * math.ceil(labeled / lb))))
    every = max(10, steps // 20)
    train = {
        "steps": steps,
        "eval_every": every,
        "log_every": every,
        "patience": 5 if val >= MIN_VAL_TO_STOP else 0,
        "min_steps": int(0.3 * steps),
        "warmup_steps": min(100, steps // 20),
        "consistency_start_step": steps // 5,
        "consistency_ramp_steps": steps // 5,
    }
    hidden = int(min(256, max(64, 32 * math.ceil(8 * dim / 32))))
    return {
        "train": train,
        "ingest": {"labeled_batch": lb, "unlabeled_batch": ub},
        "model": {"hidden": hidden, "num_couplings": 6},
    }


def size_to_data(cfg: Config, prepared: Prepared) -> Config:
    """``cfg`` with every unset (None) budget field filled for ``prepared``; unchanged when none is unset."""
    counts = prepared.counts
    sized = budget_for(
        unlabeled=int(counts.get("unlabeled", 0)),
        labeled=int(counts.get("labeled", 0)),
        dim=int(prepared.dim),
        classes=int(prepared.num_classes),
        val=int(counts.get("val", 0)),
        steps=cfg.train.steps,
    )
    out = cfg
    for section, values in sized.items():
        current = getattr(out, section)
        unset = {f.name for f in fields(current) if getattr(current, f.name) is None}
        filled = {k: v for k, v in values.items() if k in unset}
        if filled:
            out = replace(out, **{section: replace(current, **filled)})
    return apply_batch_rows(out)  # train.batch_rows, now that the batches it scales are known


def sized_fields(cfg: Config) -> list[str]:
    """The budget fields ``cfg`` leaves to the data (dotted names): what the console and MLflow call "sized"."""
    keys = budget_for(unlabeled=1, labeled=1, dim=1, classes=2)
    return [f"{s}.{k}" for s, ks in keys.items() for k in ks if getattr(getattr(cfg, s), k) is None]


def budget_line(cfg: Config, sized: list[str]) -> str:
    """The console line saying what was sized from the data (``sized``: :func:`sized_fields` before sizing)."""
    t, i = cfg.train, cfg.ingest
    stop = f", stop on validation from step {t.min_steps} (patience {t.patience})" if t.patience else ""
    what = f"{t.steps} steps at most{stop}, batches {i.labeled_batch} labeled + {i.unlabeled_batch} unlabeled"
    if "model.hidden" in sized:
        what += f", flow width {cfg.model.hidden}"
    return f"[flowgmm] budget sized from the data: {what}"
