"""Prepare a semi-supervised data set: labeled / unlabeled / val / test / ood/<name> Parquet shards + manifest.

``prepare(spec, home)`` writes ``<home>/data/<source>-<hash>/``::

    labeled/part-00000.parquet ...   id int64, x fixed_size_list<uint8|float32>[prod(shape)], y int64
    unlabeled/part-*.parquet         y is always null (labels never reach training)
    val/ test/ ood/<name>/
    unlabeled_labels.npy             true labels of the unlabeled rows (-1 unknown), aligned with
                                     load_split(prepared, "unlabeled"); for transductive accuracy only
    manifest.json                    written last

It is idempotent (a matching manifest with intact shards is reused) and atomic (everything is built in a
temporary directory and renamed into place; a failure leaves an existing data set untouched).

    python -m pipeline.data --source mnist --data-dir ../shared/data --n-labeled 1000 --n-val 1000
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.data import DataSpec
from pipeline.core.atomic import atomic_dir
from pipeline.core.errors import DataError
from pipeline.core.version import code_version
from pipeline.data import shards
from pipeline.data import sources as S
from pipeline.data.manifest import FORMAT_VERSION, Prepared, dataset_name, fingerprint, spec_key, verify_shards
from pipeline.data.splits import choose_splits

TRAIN_SPLITS = ("labeled", "unlabeled", "val")
SPLITS = ("labeled", "unlabeled", "val", "test")


def prepare(spec: DataSpec, home: str | os.PathLike, force: bool = False) -> Prepared:
    """Prepare ``spec`` under ``<home>/data/``; idempotent and atomic. Raises DataError on bad input."""
    if spec.shard_rows < 1:
        raise DataError(f"<spec>: shard_rows={spec.shard_rows} must be positive")
    if isinstance(spec.ood, str):
        spec = dataclasses.replace(spec, ood=(spec.ood,))
    spec = dataclasses.replace(spec, ood=tuple(spec.ood), feature_columns=tuple(spec.feature_columns))
    data_root = Path(home).expanduser().resolve() / "data"
    data_root.mkdir(parents=True, exist_ok=True)
    name = dataset_name(spec)
    final = data_root / name
    key = spec_key(spec)
    with _lock(data_root / f".{name}.lock"):
        inputs = fingerprint(spec)  # DataError when input files are missing
        if not force and (m := _matches(final, key, inputs)) is not None:
            return Prepared(final, m)
        with atomic_dir(final) as tmp:
            manifest = _Build(spec, tmp, name).run(key, inputs)
    return Prepared(final, manifest)


@dataclass
class _Build:
    """One build of a data set into the temporary directory ``tmp``: load and check the source, choose the
    splits, write the shards, then the manifest (last)."""

    spec: DataSpec
    tmp: Path
    name: str
    shards: dict[str, list] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, list] = field(default_factory=dict)

    def run(self, key: dict, inputs: dict) -> dict:
        t0 = time.perf_counter()
        raw = self.load()
        idx, test_idx = self.choose(raw)
        oods = self.load_oods(raw)
        self.write_pool(raw, idx)
        self.write("test", test_idx, raw.x_test[test_idx], raw.y_test[test_idx], raw)
        ood_meta = {}
        for o, (sel, xo, yo, r) in oods.items():
            self.write(f"ood/{o}", sel, xo, yo, raw, num_classes=r.num_classes)
            ood_meta[o] = {"file": r.test_file, "num_classes": r.num_classes, "class_names": r.class_names}
        np.save(self.tmp / "unlabeled_labels.npy", raw.y_train[idx["unlabeled"]].astype(np.int64))
        manifest = self.manifest(raw, key, inputs, ood_meta)
        manifest.update(_feature_stats(raw, idx))
        manifest["prepare_seconds"] = round(time.perf_counter() - t0, 3)
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return manifest

    def load(self) -> S.RawSource:
        raw = S.load_source(self.spec)
        _validate_raw(raw)
        if raw.x_train is None:
            raise DataError(f"{raw.test_file}: source '{self.spec.source}' has only a test split; use it as an ood set")
        return raw

    def choose(self, raw: S.RawSource) -> tuple[dict[str, np.ndarray], np.ndarray]:
        spec = self.spec
        idx = choose_splits(
            raw.y_train, raw.num_classes, spec.n_labeled, spec.n_val, spec.n_unlabeled, spec.seed, raw.train_file
        )
        rng = np.random.default_rng([spec.seed, 2])
        test_idx = np.arange(len(raw.y_test))
        if spec.n_test is not None:
            if spec.n_test < 1:
                raise DataError(f"{raw.test_file}: empty split 'test' (n_test={spec.n_test})")
            test_idx = np.sort(rng.permutation(len(test_idx))[: spec.n_test])
        return idx, test_idx

    def load_oods(self, raw: S.RawSource) -> dict[str, tuple]:
        spec, oods = self.spec, {}
        for o in spec.ood:
            if o == spec.source:
                raise DataError(f"{raw.test_file}: ood set '{o}' is the source itself")
            r = S.load_source(spec, source=o, test_only=True)
            _validate_raw(r)
            xo = r.x_test
            if r.kind != raw.kind or tuple(xo.shape[1:]) != tuple(raw.shape):
                raise DataError(
                    f"{r.test_file}: ood set '{o}' has {r.kind} rows of shape {tuple(xo.shape[1:])}, "
                    f"source '{spec.source}' has {raw.kind} rows of shape {tuple(raw.shape)}"
                )
            sel = np.arange(len(xo))
            if spec.n_test is not None:
                sel = np.sort(np.random.default_rng([spec.seed, 3, len(oods)]).permutation(len(xo))[: spec.n_test])
            oods[o] = (sel, xo[sel].astype(raw.dtype), r.y_test[sel], r)
        return oods

    def write_pool(self, raw: S.RawSource, idx: dict[str, np.ndarray]) -> None:
        for split in TRAIN_SPLITS:
            ii = idx[split]
            y = raw.y_train[ii]
            self.write(split, ii, raw.x_train[ii], y, raw, hide_labels=split == "unlabeled")

    def write(
        self,
        split: str,
        ids: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        raw: S.RawSource,
        *,
        hide_labels: bool = False,
        num_classes: int | None = None,
    ) -> None:
        shape = tuple(int(v) for v in raw.shape)
        self.shards[split] = shards.write_split(
            self.tmp, split, ids, x, None if hide_labels else y, raw.kind, shape, self.spec.shard_rows
        )
        self.counts[split] = int(len(ids))
        self.class_counts[split] = _class_counts(y, num_classes or raw.num_classes)

    def manifest(self, raw: S.RawSource, key: dict, inputs: dict, ood_meta: dict) -> dict[str, Any]:
        spec, counts, shape = self.spec, self.counts, [int(v) for v in raw.shape]
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "source": spec.source,
            "spec": dataclasses.asdict(spec)
            | {
                "ood": list(spec.ood),
                "feature_columns": list(spec.feature_columns),
                "image_size": list(spec.image_size),
            },
            "key": key,
            "inputs": inputs,
            "source_files": {"train": raw.train_file, "test": raw.test_file},
            "kind": raw.kind,
            "shape": shape,
            "dtype": raw.dtype,
            "levels": raw.quant_levels,
            "num_classes": raw.num_classes,
            "class_names": list(raw.class_names),
            "feature_names": raw.feature_names,
            "encoding": raw.extra.get("encoding"),  # tables: text one-hot, gaps imputed (pipeline.data.encoding)
            "image_summary": raw.extra.get("image_summary"),  # image folders: sizes, channels, files ignored
            "seed": spec.seed,
            "counts": counts,
            "class_counts": self.class_counts,
            "label_summary": f"{counts['labeled']} labeled + {counts['val']} validation "
            f"(+{counts['unlabeled']} unlabeled, {counts['test']} test)",
            "schema": {
                "id": "int64",
                "x": f"fixed_size_list<{raw.dtype}>[{int(np.prod(shape))}]",
                "y": "int64 (null = unlabeled)",
            },
            "shards": self.shards,
            "extra_files": {
                "unlabeled_labels.npy": {
                    "sha256": S.file_sha256(self.tmp / "unlabeled_labels.npy"),
                    "note": "true labels of unlabeled rows (-1 unknown), aligned with load_split(prepared, "
                    "'unlabeled'); evaluation only",
                }
            },
            "ood": ood_meta,
            "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _feature_stats(raw: S.RawSource, idx: dict[str, np.ndarray]) -> dict[str, Any]:
    """Vectors: per-feature mean and std over the labeled + unlabeled rows (the flow's fixed standardization)."""
    if raw.kind != "vector":
        return {"feature_mean": None, "feature_std": None}
    tr = np.concatenate([raw.x_train[idx["labeled"]], raw.x_train[idx["unlabeled"]]]).astype(np.float64)
    mean, std = tr.mean(0), tr.std(0)
    std = np.where(std < 1e-8, 1.0, std)  # constant features: leave unscaled
    return {"feature_mean": mean.tolist(), "feature_std": std.tolist()}


def _class_counts(y: np.ndarray, k: int) -> list[int]:
    y = y[y >= 0]
    return np.bincount(y, minlength=k).tolist()


def _validate_raw(raw: S.RawSource) -> None:
    for name, x, y, where in (
        ("train", raw.x_train, raw.y_train, raw.train_file),
        ("test", raw.x_test, raw.y_test, raw.test_file),
    ):
        if x is None:
            continue
        if len(x) == 0:
            raise DataError(f"{where}: empty split '{name}' (no rows)")
        if tuple(x.shape[1:]) != tuple(raw.shape):
            raise DataError(f"{where}: rows of shape {tuple(x.shape[1:])}, expected {tuple(raw.shape)}")
        S.check_finite(x, where, raw.feature_names)
        S.check_labels(y, raw.num_classes, where)
        if name == "test" and (y < 0).any():
            raise DataError(f"{where}: test row {int(np.flatnonzero(y < 0)[0])} has no label")


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _matches(final: Path, key: dict, inputs: dict) -> dict | None:
    try:
        m = json.loads((final / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if m.get("format_version") != FORMAT_VERSION or m.get("key") != key or m.get("inputs") != inputs:
        return None
    if verify_shards(final, m):
        return None
    return m
