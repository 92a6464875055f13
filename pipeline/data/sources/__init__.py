"""Data sources: turn a source name (+ files) into in-memory arrays with a train pool and a test split.

Every loader returns a :class:`RawSource`. Images are uint8 ``[N, C, H, W]``, vectors float32 ``[N, D]``,
labels int64 with ``-1`` for an unlabeled row (only user tables can have those). Every problem with the input
raises :class:`pipeline.core.errors.DataError` with one line naming the file and the column or value.

Sources, one module per family:
- ``generated``: seeded 2-D sets ``moons``, ``circles``, ``eight_gaussians``, ``pinwheel``
- ``bundled``: scikit-learn's ``digits`` (8x8 images, 0..16 rescaled to 0..255), ``breast_cancer``, ``wine``, ``iris``
- ``idx``: files in a data directory (``data_dir`` or ``$FLOWGMM_DATA``): ``mnist``, ``fashion_mnist``, ``notmnist``
  (test only) as IDX ``.gz``
- ``colour``: ``cifar10`` (binary release), ``svhn`` (``.mat``)
- ``table``: a user's Parquet or CSV file
- ``folder``: a user's image folder (``images``: one subfolder per class, ``unlabeled/``), decoded with Ray Data
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config.sources import ALL_SOURCES, FILE_SOURCES, GENERATED, IDX_SOURCES, SKLEARN, TEST_ONLY
from pipeline.core.errors import DataError
from pipeline.data.sources.bundled import load_sklearn
from pipeline.data.sources.colour import cifar10_files, load_cifar10, load_svhn, svhn_files
from pipeline.data.sources.common import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    RawSource,
    check_finite,
    check_labels,
    file_sha256,
    resolve_data_dir,
    stratified_holdout,
)
from pipeline.data.sources.folder import load_folder
from pipeline.data.sources.generated import TEST_SEED_OFFSET, load_generated
from pipeline.data.sources.idx import idx_files, load_idx, read_idx
from pipeline.data.sources.table import load_table, read_table_file

__all__ = [
    "RawSource",
    "load_source",
    "input_files",
    "check_labels",
    "check_finite",
    "stratified_holdout",
    "file_sha256",
    "resolve_data_dir",
    "read_idx",
    "read_table_file",
    "load_table",
    "load_generated",
    "load_sklearn",
    "load_idx",
    "load_cifar10",
    "load_svhn",
    "GENERATED",
    "SKLEARN",
    "IDX_SOURCES",
    "FILE_SOURCES",
    "ALL_SOURCES",
    "TEST_ONLY",
    "HOLDOUT_SEED",
    "HOLDOUT_FRACTION",
    "TEST_SEED_OFFSET",
]


def input_files(spec, source: str | None = None, test_only: bool = False) -> list[Path]:
    """The files a source reads (for the manifest fingerprint); raises DataError when they are missing."""
    name = source or spec.source
    if name in GENERATED or name in SKLEARN:
        return []
    if name == "images":
        return []  # fingerprinted by path, size and time (pipeline.data.sources.folder.folder_fingerprint)
    if name == "table":
        out = [Path(spec.path).expanduser().resolve()] if spec.path else []
        if spec.test_path:
            out.append(Path(spec.test_path).expanduser().resolve())
        for p in out:
            if not p.is_file():
                raise DataError(f"{p}: table file does not exist")
        return out
    d = resolve_data_dir(spec.data_dir, name)
    if name in IDX_SOURCES:
        return list(idx_files(name, d, test_only).values())
    if name == "cifar10":
        f = cifar10_files(d)
        return [f["tar"]] if "tar" in f else [v for k, v in f.items() if test_only is False or k == "test_batch.bin"]
    if name == "svhn":
        return list(svhn_files(d, test_only).values())
    raise DataError(f"unknown source '{name}' (one of {', '.join(ALL_SOURCES)})")


def load_source(spec, source: str | None = None, test_only: bool = False) -> RawSource:
    """Load ``spec.source`` (or ``source``); ``test_only`` skips the train files (OOD sets)."""
    name = source or spec.source
    if name in GENERATED:
        return load_generated(name, spec.n_points, spec.n_test, spec.noise, spec.seed)
    if name in SKLEARN:
        return load_sklearn(name)
    if name == "table":
        if not spec.path:
            raise DataError("source 'table' needs a file: set path (a Parquet or CSV file)")
        return load_table(
            spec.path,
            spec.test_path,
            tuple(spec.feature_columns),
            spec.label_column,
            spec.image_column,
            spec.num_classes,
        )
    if name == "images":
        return load_folder(spec)
    if name in FILE_SOURCES:
        d = resolve_data_dir(spec.data_dir, name)
        if name in IDX_SOURCES:
            return load_idx(name, d, test_only)
        if name == "cifar10":
            return load_cifar10(d, test_only)
        return load_svhn(d, test_only)
    raise DataError(f"unknown source '{name}' (one of {', '.join(ALL_SOURCES)})")
