"""The MNIST family as IDX ``.gz`` files in a data directory: ``mnist``, ``fashion_mnist`` and ``notmnist`` (a test
set only, for out-of-domain detection)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.config.sources import TEST_ONLY
from pipeline.core.errors import DataError
from pipeline.data.sources.common import RawSource, check_labels, first_existing

_IDX_FILES = {
    "mnist": ("MNIST", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
    "fashion_mnist": (
        "FashionMNIST",
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    ),
    "notmnist": ("NotMNIST", list("ABCDEFGHIJ")),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file, corrupt or truncated ({e})") from None
    if len(data) < 4 + 4 * ndim or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise DataError(f"{path}: not an IDX uint8 file with {ndim} dimensions (bad magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    off = 4 + 4 * ndim
    if len(data) - off != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file: header says {dims}, found {len(data) - off} data bytes")
    return np.frombuffer(data, np.uint8, offset=off).reshape(dims)


def _idx_path(root: Path, folder: str, stem: str) -> Path:
    cands = []
    for base in (root / folder / "raw", root / folder, root):
        cands += [base / f"{stem}.gz", base / stem]
    p = first_existing(cands)
    if p is None:
        raise DataError(f"{root}: missing {folder}/raw/{stem}.gz (expected the {folder} IDX files)")
    return p


def idx_files(name: str, data_dir: Path, test_only: bool = False) -> dict[str, Path]:
    folder, _ = _IDX_FILES[name]
    splits = ("t10k",) if (test_only or name in TEST_ONLY) else ("train", "t10k")
    out = {}
    for s in splits:
        out[f"{s}-images"] = _idx_path(data_dir, folder, f"{s}-images-idx3-ubyte")
        out[f"{s}-labels"] = _idx_path(data_dir, folder, f"{s}-labels-idx1-ubyte")
    return out


def _read_idx_pair(img: Path, lab: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(img, 3)
    y = read_idx(lab, 1).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{lab}: {len(y)} labels for {len(x)} images in {img.name}")
    check_labels(y, 10, str(lab))
    return x[:, None], y


def load_idx(name: str, data_dir: Path, test_only: bool = False) -> RawSource:
    files = idx_files(name, data_dir, test_only)
    _, classes = _IDX_FILES[name]
    xt, yt = _read_idx_pair(files["t10k-images"], files["t10k-labels"])
    x = y = None
    train_file = "<none>"
    if "train-images" in files:
        x, y = _read_idx_pair(files["train-images"], files["train-labels"])
        if x.shape[1:] != xt.shape[1:]:
            raise DataError(f"{files['t10k-images']}: image shape {xt.shape[2:]} differs from train {x.shape[2:]}")
        train_file = str(files["train-images"])
    return RawSource(
        name, "image", tuple(xt.shape[1:]), 10, classes, x, y, xt, yt, train_file, str(files["t10k-images"])
    )
