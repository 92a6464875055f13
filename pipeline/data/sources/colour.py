"""Colour image sets in a data directory: ``cifar10`` (the binary release, extracted or as the ``.tar.gz``) and
``svhn`` (the cropped-digits ``.mat`` files)."""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.sources.common import RawSource, check_labels, first_existing

_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


_CIFAR_REC = 1 + 3 * 32 * 32


def cifar10_files(data_dir: Path) -> dict[str, Path]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for base in (
        data_dir / "cifar-10-batches-bin",
        data_dir / "CIFAR10" / "cifar-10-batches-bin",
        data_dir / "cifar10" / "cifar-10-batches-bin",
        data_dir / "cifar10",
        data_dir / "CIFAR10",
    ):
        if (base / "test_batch.bin").is_file():
            missing = [n for n in names if not (base / n).is_file()]
            if missing:
                raise DataError(f"{base}: missing {missing[0]} (CIFAR-10 binary release)")
            out = {n: base / n for n in names}
            if (base / "batches.meta.txt").is_file():
                out["batches.meta.txt"] = base / "batches.meta.txt"
            return out
    for tar in (data_dir / "cifar-10-binary.tar.gz", data_dir / "CIFAR10" / "cifar-10-binary.tar.gz"):
        if tar.is_file():
            return {"tar": tar}
    raise DataError(
        f"{data_dir}: missing cifar-10-batches-bin/test_batch.bin "
        "(expected the CIFAR-10 binary release, cifar-10-binary.tar.gz extracted)"
    )


def _parse_cifar(buf: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(buf) == 0 or len(buf) % _CIFAR_REC:
        raise DataError(f"{where}: truncated CIFAR-10 batch: {len(buf)} bytes is not a multiple of {_CIFAR_REC}")
    a = np.frombuffer(buf, np.uint8).reshape(-1, _CIFAR_REC)
    y = a[:, 0].astype(np.int64)
    check_labels(y, 10, where)
    return a[:, 1:].reshape(-1, 3, 32, 32), y


def load_cifar10(data_dir: Path, test_only: bool = False) -> RawSource:
    files = cifar10_files(data_dir)
    classes = list(_CIFAR10_CLASSES)
    if "tar" in files:
        tar_path = files["tar"]
        blobs: dict[str, bytes] = {}
        try:
            with tarfile.open(tar_path, "r:gz") as tf:
                for m in tf.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and (base.endswith(".bin") or base == "batches.meta.txt"):
                        blobs[base] = tf.extractfile(m).read()
        except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
            raise DataError(f"{tar_path}: corrupt or truncated archive ({e})") from None

        def get(n):
            if n not in blobs:
                raise DataError(f"{tar_path}: archive lacks cifar-10-batches-bin/{n}")
            return blobs[n], f"{tar_path}:{n}"

        meta = blobs.get("batches.meta.txt")
    else:

        def get(n):
            return files[n].read_bytes(), str(files[n])

        meta = files["batches.meta.txt"].read_bytes() if "batches.meta.txt" in files else None
    if meta:
        names = [s.strip() for s in meta.decode("utf-8", "replace").splitlines() if s.strip()]
        if len(names) == 10:
            classes = names
    xt, yt = _parse_cifar(*get("test_batch.bin"))
    x = y = None
    train_where = "<none>"
    if not test_only:
        parts = [_parse_cifar(*get(f"data_batch_{i}.bin")) for i in range(1, 6)]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        train_where = get("data_batch_1.bin")[1].replace("data_batch_1.bin", "data_batch_*.bin")
    return RawSource(
        "cifar10",
        "image",
        (3, 32, 32),
        10,
        classes,
        x,
        y,
        xt,
        yt,
        train_where,
        get("test_batch.bin")[1] if "tar" in files else str(files["test_batch.bin"]),
    )


def svhn_files(data_dir: Path, test_only: bool = False) -> dict[str, Path]:
    out = {}
    for split in ("test",) if test_only else ("train", "test"):
        n = f"{split}_32x32.mat"
        p = first_existing([data_dir / "SVHN" / n, data_dir / "svhn" / n, data_dir / n])
        if p is None:
            raise DataError(f"{data_dir}: missing SVHN/{n} (expected the SVHN cropped-digits .mat files)")
        out[split] = p
    return out


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        m = scipy.io.loadmat(path)
    except Exception as e:  # noqa: BLE001 - scipy raises many kinds
        raise DataError(f"{path}: cannot read .mat file, corrupt or truncated ({type(e).__name__}: {e})") from None
    for k in ("X", "y"):
        if k not in m:
            raise DataError(f"{path}: missing variable '{k}' (SVHN .mat needs X [32,32,3,N] and y [N,1])")
    X, y = m["X"], np.asarray(m["y"]).reshape(-1)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: variable 'X' has shape {X.shape}, expected (32, 32, 3, N)")
    if X.shape[3] != len(y):
        raise DataError(f"{path}: variable 'y' has {len(y)} labels for {X.shape[3]} images")
    if X.dtype != np.uint8:
        if X.dtype.kind not in "iuf" or X.min() < 0 or X.max() > 255:
            raise DataError(f"{path}: variable 'X' has dtype {X.dtype}, expected uint8")
        X = X.astype(np.uint8)
    y = y.astype(np.int64)
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    check_labels(y, 10, f"{path}: variable 'y'")
    return np.ascontiguousarray(X.transpose(3, 2, 0, 1)), y


def load_svhn(data_dir: Path, test_only: bool = False) -> RawSource:
    files = svhn_files(data_dir, test_only)
    xt, yt = _read_svhn(files["test"])
    x = y = None
    if not test_only:
        x, y = _read_svhn(files["train"])
    return RawSource(
        "svhn",
        "image",
        (3, 32, 32),
        10,
        [str(i) for i in range(10)],
        x,
        y,
        xt,
        yt,
        str(files.get("train", "<none>")),
        str(files["test"]),
    )
