"""Data sources: turn a source name (+ files) into in-memory arrays with a train pool and a test split.

Every loader returns a :class:`RawSource`. Images are uint8 ``[N, C, H, W]``, vectors float32 ``[N, D]``,
labels int64 with ``-1`` for an unlabeled row (only user tables can have those). Every problem with the input
raises :class:`pipeline.errors.DataError` with one line naming the file and the column or value.

Sources
- generated 2-D sets (seeded): ``moons``, ``circles``, ``eight_gaussians``, ``pinwheel``
- bundled with scikit-learn: ``digits`` (8x8 images, 0..16 rescaled to 0..255), ``breast_cancer``, ``wine``, ``iris``
- files in a data directory (``data_dir`` or ``$FLOWGMM_DATA``): ``mnist``, ``fashion_mnist``, ``notmnist``
  (test only) as IDX ``.gz``; ``cifar10`` (binary release); ``svhn`` (``.mat``)
- ``table``: a user's Parquet or CSV file
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

GENERATED = ("moons", "circles", "eight_gaussians", "pinwheel")
SKLEARN = ("digits", "breast_cancer", "wine", "iris")
IDX_SOURCES = ("mnist", "fashion_mnist", "notmnist")
FILE_SOURCES = IDX_SOURCES + ("cifar10", "svhn")
ALL_SOURCES = GENERATED + SKLEARN + FILE_SOURCES + ("table",)
TEST_ONLY = ("notmnist",)

# Test sets of seed-free sources are held out with this fixed seed so that every seed sees the same test set.
HOLDOUT_SEED = 20240611
HOLDOUT_FRACTION = 0.2
# Generated sets draw their test split from an independent stream.
TEST_SEED_OFFSET = 1_000_003

_IDX_FILES = {
    "mnist": ("MNIST", ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]),
    "fashion_mnist": ("FashionMNIST", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                       "Shirt", "Sneaker", "Bag", "Ankle boot"]),
    "notmnist": ("NotMNIST", list("ABCDEFGHIJ")),
}
_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class RawSource:
    name: str
    kind: str                       # "image" | "vector"
    shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]
    x_train: np.ndarray | None      # None for test-only sources
    y_train: np.ndarray | None
    x_test: np.ndarray | None       # None: hold the test split out of the train pool
    y_test: np.ndarray | None
    train_file: str = "<generated>"  # named in error messages
    test_file: str = "<generated>"
    feature_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> str:
        return "uint8" if self.kind == "image" else "float32"


# ----------------------------------------------------------------------------------------------- helpers
def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """Labels must be -1 (unlabeled) or in [0, K)."""
    bad = (y != -1) & ((y < 0) | (y >= num_classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: label {int(y[i])} at row {i} is outside [0, {num_classes})")


def check_finite(x: np.ndarray, where: str, names: list[str] | None = None) -> None:
    if x.dtype.kind != "f":
        return
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        col = f"column '{names[c]}'" if names and c < len(names) else f"feature {c}"
        raise DataError(f"{where}: {col} has non-finite value {x.reshape(len(x), -1)[r, c]} at row {r}")


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split labeled row indices into (pool, test), class-stratified; unlabeled rows stay in the pool."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y[y >= 0]):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[: int(round(fraction * len(idx)))])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[test] = False
    return np.flatnonzero(mask), test


def resolve_data_dir(data_dir: str | os.PathLike | None, source: str) -> Path:
    d = data_dir or os.environ.get("FLOWGMM_DATA")
    if not d:
        raise DataError(f"source '{source}' needs a data directory: pass --data-dir or set FLOWGMM_DATA")
    p = Path(d).expanduser()
    if not p.is_dir():
        raise DataError(f"{p}: data directory for source '{source}' does not exist")
    return p


def _first_existing(candidates: list[Path]) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- 2-D sets
def _gen_2d(name: str, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    if name == "moons":
        from sklearn.datasets import make_moons
        x, y = make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(2**31)))
        k = 2
    elif name == "circles":
        from sklearn.datasets import make_circles
        x, y = make_circles(n_samples=n, noise=noise, factor=0.5, random_state=int(rng.integers(2**31)))
        k = 2
    elif name == "eight_gaussians":
        k = 8
        y = rng.integers(0, k, n)
        ang = 2 * np.pi * y / k
        centers = 2.0 * np.stack([np.cos(ang), np.sin(ang)], 1)
        x = centers + rng.normal(size=(n, 2)) * (2.0 * noise)
    elif name == "pinwheel":
        # Johnson et al. (2016) pinwheel, as in the FlowGMM synthetic figures: 5 arms.
        k, radial_std, rate = 5, 0.3, 0.25
        y = np.repeat(np.arange(k), int(math.ceil(n / k)))[:n]
        rng.shuffle(y)
        feats = rng.normal(size=(n, 2)) * np.array([radial_std, noise])
        feats[:, 0] += 1.0
        ang = 2 * np.pi * y / k + rate * np.exp(feats[:, 0])
        rot = np.stack([np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)], 1).reshape(-1, 2, 2)
        x = 2.0 * np.einsum("ti,tij->tj", feats, rot)
    else:  # pragma: no cover
        raise DataError(f"unknown generated source '{name}'")
    return x.astype(np.float32), np.asarray(y, np.int64), k


def load_generated(name: str, n_points: int, n_test: int | None, noise: float, seed: int) -> RawSource:
    if n_points <= 0:
        raise DataError(f"<generated {name}>: n_points={n_points} must be positive")
    x, y, k = _gen_2d(name, n_points, noise, seed)
    xt, yt, _ = _gen_2d(name, n_test or n_points, noise, seed + TEST_SEED_OFFSET)
    where = f"<generated {name}>"
    return RawSource(name, "vector", (2,), k, [str(i) for i in range(k)], x, y, xt, yt, where, where,
                     feature_names=["x0", "x1"], extra={"noise": noise, "n_points": n_points})


# ----------------------------------------------------------------------------------------------- sklearn
def load_sklearn(name: str) -> RawSource:
    import sklearn
    from sklearn import datasets as skd

    where = f"<sklearn {sklearn.__version__} load_{name}>"
    if name == "digits":
        b = skd.load_digits()
        # 0..16 -> 0..255 so that images are uint8 [1, 8, 8] like every other image source
        x = np.clip(np.round(b.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
        kind, shape, names, fnames = "image", (1, 8, 8), [str(i) for i in range(10)], None
    elif name in ("breast_cancer", "wine", "iris"):
        b = getattr(skd, f"load_{name}")()
        x = b.data.astype(np.float32)
        kind, shape = "vector", (x.shape[1],)
        names, fnames = [str(t) for t in b.target_names], [str(f) for f in b.feature_names]
    else:  # pragma: no cover
        raise DataError(f"unknown scikit-learn source '{name}'")
    y = b.target.astype(np.int64)
    pool, test = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
    return RawSource(name, kind, shape, len(names), names, x[pool], y[pool], x[test], y[test], where, where,
                     feature_names=fnames, extra={"pool_index": "holdout", "holdout_seed": HOLDOUT_SEED})


# ----------------------------------------------------------------------------------------------- IDX (MNIST family)
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
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    off = 4 + 4 * ndim
    if len(data) - off != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file: header says {dims}, found {len(data) - off} data bytes")
    return np.frombuffer(data, np.uint8, offset=off).reshape(dims)


def _idx_path(root: Path, folder: str, stem: str) -> Path:
    cands = []
    for base in (root / folder / "raw", root / folder, root):
        cands += [base / f"{stem}.gz", base / stem]
    p = _first_existing(cands)
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
    return RawSource(name, "image", tuple(xt.shape[1:]), 10, classes, x, y, xt, yt,
                     train_file, str(files["t10k-images"]))


# ----------------------------------------------------------------------------------------------- CIFAR-10 (binary)
_CIFAR_REC = 1 + 3 * 32 * 32


def cifar10_files(data_dir: Path) -> dict[str, Path]:
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for base in (data_dir / "cifar-10-batches-bin", data_dir / "CIFAR10" / "cifar-10-batches-bin",
                 data_dir / "cifar10" / "cifar-10-batches-bin", data_dir / "cifar10", data_dir / "CIFAR10"):
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
    raise DataError(f"{data_dir}: missing cifar-10-batches-bin/test_batch.bin "
                    "(expected the CIFAR-10 binary release, cifar-10-binary.tar.gz extracted)")


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
    return RawSource("cifar10", "image", (3, 32, 32), 10, classes, x, y, xt, yt, train_where,
                     get("test_batch.bin")[1] if "tar" in files else str(files["test_batch.bin"]))


# ----------------------------------------------------------------------------------------------- SVHN (.mat)
def svhn_files(data_dir: Path, test_only: bool = False) -> dict[str, Path]:
    out = {}
    for split in (("test",) if test_only else ("train", "test")):
        n = f"{split}_32x32.mat"
        p = _first_existing([data_dir / "SVHN" / n, data_dir / "svhn" / n, data_dir / n])
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
    return RawSource("svhn", "image", (3, 32, 32), 10, [str(i) for i in range(10)], x, y, xt, yt,
                     str(files.get("train", "<none>")), str(files["test"]))


# ----------------------------------------------------------------------------------------------- user tables
def read_table_file(path: str | os.PathLike):
    """Read a Parquet or CSV file into a pyarrow Table (DataError on a missing/corrupt file)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: table file does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(p)
        if suffix in (".csv", ".tsv", ".txt") or suffix == ".gz" and p.stem.lower().endswith(".csv"):
            opts = pacsv.ParseOptions(delimiter="\t") if suffix == ".tsv" else None
            return pacsv.read_csv(p, parse_options=opts)
    except (pa.ArrowException, OSError, EOFError) as e:
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise DataError(f"{p}: corrupt or truncated {kind} file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    raise DataError(f"{p}: unsupported table format '{suffix}' (use .parquet or .csv)")


def _table_labels(table, path: Path, col: str, allow_null: bool) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if col not in table.column_names:
        raise DataError(f"{path}: missing column '{col}' (label column)")
    arr = table.column(col)
    t = arr.type
    if pa.types.is_null(t):
        if not allow_null:
            raise DataError(f"{path}: column '{col}' has no labels")
        return np.full(len(arr), -1, np.int64)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise DataError(f"{path}: column '{col}' has dtype {t}, expected integer labels")
    nulls = arr.is_null()
    if pc.any(nulls).as_py() and not allow_null:
        i = int(np.flatnonzero(nulls.to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column '{col}' has a null label at row {i} (test rows need labels)")
    v = arr.to_numpy(zero_copy_only=False)
    mask = nulls.to_numpy(zero_copy_only=False)
    v = np.asarray(v, dtype=np.float64)
    if pa.types.is_floating(t):
        mask = mask | np.isnan(v)
        if not allow_null and mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise DataError(f"{path}: column '{col}' has a null label at row {i} (test rows need labels)")
        fin = v[~mask]
        bad = ~np.isfinite(fin) | (fin != np.round(fin))
        if bad.any():
            raise DataError(f"{path}: column '{col}' has non-integer label {fin[bad][0]}")
    y = np.where(mask, -1, np.nan_to_num(v, nan=-1)).astype(np.int64)
    neg = (~mask) & (y < 0)
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise DataError(f"{path}: column '{col}': label {int(y[i])} at row {i} is outside [0, K) "
                        "(use null for unlabeled rows)")
    return y


def _image_from_column(table, path: Path, col: str) -> np.ndarray:
    import pyarrow as pa

    if col not in table.column_names:
        raise DataError(f"{path}: missing column '{col}' (image column)")
    arr = table.column(col).combine_chunks()
    t = arr.type
    n = len(arr)
    if arr.null_count:
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: column '{col}' has a null image at row {i}")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        items = arr.to_pylist()
        sizes = {len(b) for b in items}
        if len(sizes) != 1:
            raise DataError(f"{path}: column '{col}' has images of different sizes {sorted(sizes)[:4]} bytes")
        flat = np.frombuffer(b"".join(items), np.uint8).reshape(n, -1)
        return _infer_image_shape(flat, path, col)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        try:
            if pa.types.is_fixed_size_list(t):
                x = arr.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
            else:
                x = np.asarray(arr.to_pylist())
        except ValueError:
            x = None
        if x is None or x.dtype == object:
            raise DataError(f"{path}: column '{col}' has images of different shapes")
        if x.dtype.kind not in "iub":
            raise DataError(f"{path}: column '{col}' has dtype {x.dtype}, expected uint8 pixel values")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{path}: column '{col}' has pixel value {int(x.max() if x.max() > 255 else x.min())} outside [0, 255]")
        x = x.astype(np.uint8)
        if x.ndim == 2:
            return _infer_image_shape(x, path, col)
        if x.ndim == 3:
            return x[:, None]
        if x.ndim == 4:
            return x if x.shape[1] in (1, 3) or x.shape[-1] not in (1, 3) else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        raise DataError(f"{path}: column '{col}' has images of shape {x.shape[1:]}, expected [H,W], [C,H,W] or [H,W,C]")
    raise DataError(f"{path}: column '{col}' has dtype {t}, expected binary or a list of uint8 pixels")


def _infer_image_shape(flat: np.ndarray, path: Path, col: str) -> np.ndarray:
    d = flat.shape[1]
    for c in (1, 3):
        s = int(round(math.sqrt(d / c)))
        if c * s * s == d:
            return flat.reshape(len(flat), c, s, s)
    raise DataError(f"{path}: column '{col}' has {d} values per image, not a square 1- or 3-channel image")


def _table_features(table, path: Path, features: list[str]) -> np.ndarray:
    import pyarrow as pa

    cols = []
    for c in features:
        if c not in table.column_names:
            raise DataError(f"{path}: missing column '{c}' (feature column)")
        a = table.column(c)
        t = a.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"{path}: column '{c}' has dtype {t}, expected a number")
        if a.null_count:
            i = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: column '{c}' has a null (NaN) value at row {i}")
        cols.append(np.asarray(a.to_numpy(zero_copy_only=False), np.float64))
    x64 = np.stack(cols, 1) if cols else np.zeros((table.num_rows, 0))
    x = x64.astype(np.float32)
    check_finite(x, str(path), features)
    return x


def load_table(path: str | os.PathLike, test_path: str | os.PathLike | None, feature_columns: tuple[str, ...],
               label_column: str, image_column: str | None, num_classes: int | None) -> RawSource:
    p = Path(path).expanduser().resolve()
    table = read_table_file(p)
    if table.num_rows == 0:
        raise DataError(f"{p}: empty table (no rows for the training pool)")
    names = table.column_names
    if image_column:
        if feature_columns:
            raise DataError(f"{p}: give either image_column '{image_column}' or feature_columns, not both")
        features: list[str] = []
    elif feature_columns:
        features = list(feature_columns)
    else:
        features = [c for c in names if c not in (label_column, "id")]
        if not features:
            raise DataError(f"{p}: no feature columns besides '{label_column}'")

    def check_columns(tab, where: Path):
        if len(set(tab.column_names)) != len(tab.column_names):
            raise DataError(f"{where}: duplicate column names")
        if tab is not table:  # the test table must have the train table's columns, no more
            for c in tab.column_names:
                if c not in names:
                    raise DataError(f"{where}: unexpected extra column '{c}' (not in the train table {p.name})")

    check_columns(table, p)
    y = _table_labels(table, p, label_column, allow_null=True)
    if image_column:
        x = _image_from_column(table, p, image_column)
        kind, shape = "image", tuple(x.shape[1:])
    else:
        x = _table_features(table, p, features)
        kind, shape = "vector", (x.shape[1],)

    xt = yt = None
    tp = None
    if test_path:
        tp = Path(test_path).expanduser().resolve()
        tt = read_table_file(tp)
        if tt.num_rows == 0:
            raise DataError(f"{tp}: empty split 'test' (the test table has no rows)")
        check_columns(tt, tp)
        yt = _table_labels(tt, tp, label_column, allow_null=False)
        if image_column:
            xt = _image_from_column(tt, tp, image_column)
            if xt.shape[1:] != x.shape[1:]:
                raise DataError(f"{tp}: column '{image_column}' has image shape {xt.shape[1:]}, train has {x.shape[1:]}")
        else:
            xt = _table_features(tt, tp, features)

    labeled = y[y >= 0]
    if num_classes is None:
        if len(labeled) == 0:
            raise DataError(f"{p}: column '{label_column}' has no labels at all")
        k = int(max(labeled.max(), yt.max() if yt is not None and len(yt) else 0)) + 1
    else:
        k = int(num_classes)
    check_labels(y, k, f"{p}: column '{label_column}'")
    if yt is not None:
        check_labels(yt, k, f"{tp}: column '{label_column}'")
    if xt is None:
        pool, test = stratified_holdout(y, HOLDOUT_FRACTION, HOLDOUT_SEED)
        x, y, xt, yt = x[pool], y[pool], x[test], y[test]
    return RawSource("table", kind, shape, k, [str(i) for i in range(k)], x, y, xt, yt, str(p),
                     str(tp) if tp else str(p), feature_names=features or None,
                     extra={"label_column": label_column, "image_column": image_column,
                            "test_held_out": test_path is None})


# ----------------------------------------------------------------------------------------------- dispatch
def input_files(spec, source: str | None = None, test_only: bool = False) -> list[Path]:
    """The files a source reads (for the manifest fingerprint); raises DataError when they are missing."""
    name = source or spec.source
    if name in GENERATED or name in SKLEARN:
        return []
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
        return load_table(spec.path, spec.test_path, tuple(spec.feature_columns), spec.label_column,
                          spec.image_column, spec.num_classes)
    if name in FILE_SOURCES:
        d = resolve_data_dir(spec.data_dir, name)
        if name in IDX_SOURCES:
            return load_idx(name, d, test_only)
        if name == "cifar10":
            return load_cifar10(d, test_only)
        return load_svhn(d, test_only)
    raise DataError(f"unknown source '{name}' (one of {', '.join(ALL_SOURCES)})")
