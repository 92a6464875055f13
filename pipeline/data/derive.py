"""Data sets derived from a prepared one, for the second models that out-of-domain evaluation trains: the same
splits with one class held out (its rows become out-of-domain), or with every training row perturbed (the
background model of a likelihood ratio). Written beside the source as ``<source>-<suffix>/`` with their own manifest,
atomically, and reused while the source and the recipe of the derivation are unchanged.

    held = without_class(prepared, k=2, unlabeled_keep=pred != 2)
    held.num_classes == prepared.num_classes - 1        # labels renumbered, class 2's name dropped
    bg = perturbed(prepared, rate=0.2, seed=0)          # same splits, a share of every row's cells randomised
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from pipeline.core.atomic import atomic_dir
from pipeline.data import shards
from pipeline.data import sources as S
from pipeline.data.manifest import Prepared, read_manifest, verify_shards

TRAIN_SPLITS = ("labeled", "unlabeled", "val")
# (split, x, y) -> new x, new y, the boolean mask of the source rows kept
Transform = Callable[[str, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def without_class(prepared: Prepared, k: int, unlabeled_keep: np.ndarray) -> Prepared:
    """The data without class ``k``: its labeled, validation and test rows dropped, the unlabeled rows where
    ``unlabeled_keep`` is False dropped (the caller marks the rows of class ``k``: by their withheld label where the
    source knows it, else by a model's prediction), the other classes renumbered ``0..K-2``."""
    num = prepared.num_classes
    if not 0 <= k < num:
        raise ValueError(f"class {k} is not one of the {num} classes")
    keep_mask = np.asarray(unlabeled_keep, bool)
    if len(keep_mask) != prepared.counts["unlabeled"]:
        have = prepared.counts["unlabeled"]
        raise ValueError(f"unlabeled_keep has {len(keep_mask)} rows, the unlabeled split {have}")
    renumber = np.array([i - (i > k) if i != k else -1 for i in range(num)] + [-1], dtype=np.int64)  # [-1] -> -1

    def transform(split: str, x: np.ndarray, y: np.ndarray):
        keep = keep_mask if split == "unlabeled" else y != k
        return x[keep], renumber[y[keep]], keep

    names = [n for i, n in enumerate(prepared.class_names) if i != k]
    key = {"without_class": int(k), "unlabeled_kept": int(keep_mask.sum()), "unlabeled_hash": _hash(keep_mask)}
    return _derive(prepared, f"without-{k}", key, transform, {"num_classes": num - 1, "class_names": names})


def perturbed(prepared: Prepared, rate: float, seed: int) -> Prepared:
    """Every training row with a share ``rate`` of its cells replaced at random (Ren et al., NeurIPS 2019): an image
    cell by a uniform grey level of the data's quantization, a table cell by the same column's value in a random row
    of the split (the column's distribution kept, the row's structure broken). Labels and the test split unchanged."""
    if not 0 < rate < 1:
        raise ValueError(f"perturbation rate {rate} must be in (0, 1)")
    rng = np.random.default_rng([seed, 7])
    levels = prepared.levels or 256

    def transform(split: str, x: np.ndarray, y: np.ndarray):
        keep = np.ones(len(x), bool)
        if split not in TRAIN_SPLITS or not len(x):
            return x, y, keep
        flat = x.reshape(len(x), -1).copy()
        hit = rng.random(flat.shape) < rate
        if prepared.kind == "image":
            grey = rng.integers(0, levels, size=flat.shape) * (255.0 / (levels - 1))
            flat[hit] = np.rint(grey[hit]).astype(flat.dtype)
        else:
            rows = rng.integers(0, len(x), size=flat.shape)
            flat[hit] = flat[rows[hit], np.nonzero(hit)[1]]
        return flat.reshape(x.shape), y, keep

    return _derive(prepared, f"perturbed-{rate:g}-{seed}", {"perturbed": rate, "seed": seed}, transform, {})


def _derive(prepared: Prepared, suffix: str, key: dict, transform: Transform, changes: dict) -> Prepared:
    """Write (or reuse) ``<source>-<suffix>``: every split of the source but its OOD sets, through ``transform``."""
    final = prepared.root.with_name(f"{prepared.root.name}-{suffix}")
    key = {**key, "source": prepared.manifest["name"], "source_created": prepared.manifest.get("created")}
    try:
        m = read_manifest(final)
        if m.get("derived_from") == key and not verify_shards(final, m):
            return Prepared(final, m)
    except Exception:  # noqa: BLE001 - absent or unreadable: build it afresh
        pass
    man = prepared.manifest
    counts, class_counts, written = {}, {}, {}
    num = int(changes.get("num_classes", prepared.num_classes))
    with atomic_dir(final) as tmp:
        for split in ("labeled", "unlabeled", "val", "test"):
            x, y, ids = shards.load_split(prepared, split, with_ids=True)
            if split == "unlabeled":
                y = np.load(prepared.root / "unlabeled_labels.npy")
            x, y, keep = transform(split, x, y)
            ids = ids[keep]
            stored = None if split == "unlabeled" else y
            written[split] = shards.write_split(
                tmp, split, ids, x, stored, prepared.kind, prepared.shape, int(man["spec"]["shard_rows"])
            )
            if split == "unlabeled":
                np.save(tmp / "unlabeled_labels.npy", y)
            counts[split] = int(len(ids))
            class_counts[split] = np.bincount(y[y >= 0], minlength=num).tolist()
        new = {
            **man,
            **changes,
            "name": final.name,
            "derived_from": key,
            "counts": counts,
            "class_counts": class_counts,
            "shards": written,
            "ood": {},
            "label_summary": f"{counts['labeled']} labeled + {counts['val']} validation "
            f"(+{counts['unlabeled']} unlabeled, {counts['test']} test)",
            "extra_files": {"unlabeled_labels.npy": {"sha256": S.file_sha256(tmp / "unlabeled_labels.npy")}},
        }
        (tmp / "manifest.json").write_text(json.dumps(new, indent=1))
    return Prepared(final, json.loads(json.dumps(new)))  # as a reuse reads it back


def _hash(mask: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()[:16]
