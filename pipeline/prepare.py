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
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import sources as S
from .errors import DataError
from .version import code_version

FORMAT_VERSION = 1
TRAIN_SPLITS = ("labeled", "unlabeled", "val")
SPLITS = ("labeled", "unlabeled", "val", "test")
# default sizes for the paper's MNIST setting (1k labels, 1k validation)
PAPER_DEFAULTS = {"mnist": (1000, 1000), "fashion_mnist": (1000, 1000)}


@dataclass
class DataSpec:
    source: str = "digits"        # moons|circles|eight_gaussians|pinwheel|digits|breast_cancer|wine|iris|mnist|fashion_mnist|cifar10|svhn|table
    n_labeled: int = 100           # class-balanced labeled training rows
    n_val: int = 100               # labeled validation rows (calibration, model selection)
    n_unlabeled: int | None = None  # cap on unlabeled rows (None = all the rest)
    n_test: int | None = None      # cap on test rows (None = all)
    n_points: int = 1000           # size of generated 2-D sets (train pool); their test set uses another seed
    noise: float = 0.05            # for the 2-D generators
    seed: int = 0
    shard_rows: int = 2048         # rows per Parquet shard
    ood: tuple[str, ...] = ()      # test splits of other sources, e.g. ("fashion_mnist", "notmnist")
    data_dir: str | None = None    # falls back to $FLOWGMM_DATA
    path: str | None = None        # table source: Parquet or CSV file (train pool)
    test_path: str | None = None
    feature_columns: tuple[str, ...] = ()   # table source; empty = all but label (and "id")
    label_column: str = "label"
    image_column: str | None = None
    num_classes: int | None = None  # table source: if None inferred from labels

    @classmethod
    def paper(cls, source: str = "mnist", **kw) -> "DataSpec":
        """The paper's setting: MNIST/FashionMNIST with 1k labels and a 1k validation split."""
        n_lab, n_val = PAPER_DEFAULTS.get(source, (cls.n_labeled, cls.n_val))
        return cls(source=source, **{"n_labeled": n_lab, "n_val": n_val, **kw})


@dataclass
class Prepared:
    root: Path
    manifest: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        if not self.manifest:
            self.manifest = read_manifest(self.root)

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Prepared":
        return cls(Path(root), read_manifest(Path(root)))

    def split_dir(self, split: str) -> Path:
        if split not in self.manifest["counts"]:
            raise DataError(f"{self.root / 'manifest.json'}: no split '{split}' "
                            f"(have {', '.join(self.manifest['counts'])})")
        return self.root / split

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["counts"])

    @property
    def ood_names(self) -> list[str]:
        return [s.split("/", 1)[1] for s in self.manifest["counts"] if s.startswith("ood/")]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest["counts"])

    @property
    def feature_mean(self) -> np.ndarray | None:
        m = self.manifest.get("feature_mean")
        return None if m is None else np.asarray(m, np.float32)

    @property
    def feature_std(self) -> np.ndarray | None:
        s = self.manifest.get("feature_std")
        return None if s is None else np.asarray(s, np.float32)

    def verify(self) -> None:
        """Check every shard against the manifest checksums (DataError naming the first bad file)."""
        bad = _verify_shards(self.root, self.manifest)
        if bad:
            raise DataError(bad)


# ----------------------------------------------------------------------------------------------- manifest
def read_manifest(root: Path) -> dict:
    p = Path(root) / "manifest.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: no manifest (not a prepared data set)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: unreadable manifest ({e})") from None


def _verify_shards(root: Path, manifest: dict) -> str | None:
    for split, shards in manifest.get("shards", {}).items():
        for sh in shards:
            f = root / sh["file"]
            if not f.is_file():
                return f"{f}: missing shard of split '{split}'"
            if f.stat().st_size != sh["bytes"] or S.file_sha256(f) != sh["sha256"]:
                return f"{f}: shard of split '{split}' is corrupt or truncated (checksum mismatch)"
    for name, meta in manifest.get("extra_files", {}).items():
        f = root / name
        if not f.is_file() or S.file_sha256(f) != meta["sha256"]:
            return f"{f}: corrupt or missing (checksum mismatch)"
    return None


def spec_key(spec: DataSpec) -> dict:
    """The identity of a prepared data set: every field that changes the output, normalized."""
    d = dataclasses.asdict(spec)
    d.pop("data_dir")  # where the files live does not matter; their content is fingerprinted separately
    d["ood"] = list(spec.ood)
    d["feature_columns"] = list(spec.feature_columns)
    for k in ("path", "test_path"):
        if d[k]:
            d[k] = str(Path(d[k]).expanduser().resolve())
    if spec.source not in S.GENERATED:
        d.pop("n_points"), d.pop("noise")
    if spec.source != "table":
        for k in ("path", "test_path", "feature_columns", "label_column", "image_column", "num_classes"):
            d.pop(k)
    d["format_version"] = FORMAT_VERSION
    return d


def dataset_name(spec: DataSpec) -> str:
    h = hashlib.sha256(json.dumps(spec_key(spec), sort_keys=True).encode()).hexdigest()[:12]
    stem = spec.source if spec.source != "table" else f"table-{Path(spec.path or 'table').stem}"
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return f"{stem}-{h}"


def _fingerprint(spec: DataSpec) -> dict[str, Any]:
    files = list(S.input_files(spec))
    for name in spec.ood:
        files += S.input_files(spec, source=name, test_only=True)
    out: dict[str, Any] = {str(f): {"bytes": f.stat().st_size, "sha256": S.file_sha256(f)} for f in files}
    if spec.source in S.SKLEARN or any(o in S.SKLEARN + S.GENERATED for o in spec.ood) or spec.source in S.GENERATED:
        import sklearn
        out["sklearn"] = sklearn.__version__
    return out


# ----------------------------------------------------------------------------------------------- split selection
def _balanced_take(by_class: list[np.ndarray], n: int, rng: np.random.Generator, what: str,
                   where: str) -> np.ndarray:
    k = len(by_class)
    per = np.full(k, n // k)
    per[rng.permutation(k)[: n % k]] += 1
    out = []
    for c in range(k):
        if len(by_class[c]) < per[c]:
            raise DataError(f"{where}: class {c} has only {len(by_class[c])} labeled rows left, "
                            f"{what} needs {per[c]}")
        out.append(by_class[c][: per[c]])
        by_class[c] = by_class[c][per[c]:]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def choose_splits(y_pool: np.ndarray, num_classes: int, n_labeled: int, n_val: int,
                  n_unlabeled: int | None, seed: int, where: str = "<pool>") -> dict[str, np.ndarray]:
    """Row indices into the train pool for labeled / val / unlabeled (class-balanced, seeded)."""
    if n_labeled < num_classes:
        raise DataError(f"{where}: n_labeled={n_labeled} is fewer labeled examples than the {num_classes} classes")
    if n_val < 1:
        raise DataError(f"{where}: empty split 'val' (n_val={n_val}); calibration needs labeled validation rows")
    rng = np.random.default_rng([seed, 1])
    by_class = []
    for c in range(num_classes):
        idx = np.flatnonzero(y_pool == c)
        by_class.append(idx[rng.permutation(len(idx))])
    lab = _balanced_take(by_class, n_labeled, rng, f"n_labeled={n_labeled}", where)
    val = _balanced_take(by_class, n_val, rng, f"n_val={n_val}", where)
    used = np.zeros(len(y_pool), bool)
    used[lab] = used[val] = True
    unl = np.flatnonzero(~used)
    unl = unl[rng.permutation(len(unl))]
    if n_unlabeled is not None:
        unl = unl[: max(0, int(n_unlabeled))]
    if len(unl) == 0:
        raise DataError(f"{where}: empty split 'unlabeled' ({len(y_pool)} pool rows, n_labeled={n_labeled}, "
                        f"n_val={n_val}, n_unlabeled={n_unlabeled})")
    return {"labeled": lab[rng.permutation(len(lab))], "val": val[rng.permutation(len(val))], "unlabeled": unl}


def split_counts(spec: DataSpec) -> dict[str, Any]:
    """Only the index split (no shards): counts per split and class, for a quick look at a configuration."""
    raw = S.load_source(spec)
    idx = choose_splits(raw.y_train, raw.num_classes, spec.n_labeled, spec.n_val, spec.n_unlabeled, spec.seed,
                        raw.train_file)
    n_test = len(raw.y_test) if spec.n_test is None else min(spec.n_test, len(raw.y_test))
    return {"counts": {"labeled": len(idx["labeled"]), "unlabeled": len(idx["unlabeled"]),
                       "val": len(idx["val"]), "test": n_test},
            "class_counts": {k: np.bincount(raw.y_train[v][raw.y_train[v] >= 0], minlength=raw.num_classes).tolist()
                             for k, v in idx.items()}}


# ----------------------------------------------------------------------------------------------- writing
def _arrow_table(ids: np.ndarray, x: np.ndarray, y: np.ndarray | None, kind: str, shape, meta: dict):
    import pyarrow as pa

    d = int(np.prod(shape))
    vt = pa.uint8() if kind == "image" else pa.float32()
    flat = np.ascontiguousarray(x.reshape(len(x), d).astype(vt.to_pandas_dtype(), copy=False)).reshape(-1)
    xs = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=vt), d)
    ys = pa.nulls(len(ids), pa.int64()) if y is None else pa.array(y.astype(np.int64), mask=(y < 0))
    schema = shard_schema(kind, shape).with_metadata({"flowgmm": json.dumps(meta)})
    return pa.Table.from_arrays([pa.array(ids.astype(np.int64)), xs, ys], schema=schema)


def shard_schema(kind: str, shape):
    import pyarrow as pa

    vt = pa.uint8() if kind == "image" else pa.float32()
    return pa.schema([pa.field("id", pa.int64(), nullable=False),
                      pa.field("x", pa.list_(vt, int(np.prod(shape))), nullable=False),
                      pa.field("y", pa.int64(), nullable=True)])


def _write_split(root: Path, split: str, ids, x, y, kind, shape, shard_rows: int) -> list[dict]:
    import pyarrow.parquet as pq

    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    out = []
    n = len(ids)
    for i, s in enumerate(range(0, n, shard_rows)):
        e = min(n, s + shard_rows)
        tab = _arrow_table(ids[s:e], x[s:e], None if y is None else y[s:e], kind, shape,
                           {"split": split, "kind": kind, "shape": list(shape)})
        f = d / f"part-{i:05d}.parquet"
        pq.write_table(tab, f, row_group_size=min(shard_rows, 1024), compression="snappy")
        out.append({"file": f"{split}/{f.name}", "rows": e - s, "bytes": f.stat().st_size,
                    "sha256": S.file_sha256(f)})
    return out


def _class_counts(y: np.ndarray, k: int) -> list[int]:
    y = y[y >= 0]
    return np.bincount(y, minlength=k).tolist()


def _validate_raw(raw: S.RawSource) -> None:
    for name, x, y, where in (("train", raw.x_train, raw.y_train, raw.train_file),
                              ("test", raw.x_test, raw.y_test, raw.test_file)):
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


def _build(spec: DataSpec, tmp: Path, key: dict, inputs: dict, name: str) -> dict:
    t0 = time.perf_counter()
    raw = S.load_source(spec)
    _validate_raw(raw)
    if raw.x_train is None:
        raise DataError(f"{raw.test_file}: source '{spec.source}' has only a test split; use it as an ood set")
    k = raw.num_classes
    idx = choose_splits(raw.y_train, k, spec.n_labeled, spec.n_val, spec.n_unlabeled, spec.seed, raw.train_file)
    rng = np.random.default_rng([spec.seed, 2])
    test_idx = np.arange(len(raw.y_test))
    if spec.n_test is not None:
        if spec.n_test < 1:
            raise DataError(f"{raw.test_file}: empty split 'test' (n_test={spec.n_test})")
        test_idx = np.sort(rng.permutation(len(test_idx))[: spec.n_test])

    oods = {}
    for o in spec.ood:
        if o == spec.source:
            raise DataError(f"{raw.test_file}: ood set '{o}' is the source itself")
        r = S.load_source(spec, source=o, test_only=True)
        _validate_raw(r)
        xo = r.x_test
        if r.kind != raw.kind or tuple(xo.shape[1:]) != tuple(raw.shape):
            raise DataError(f"{r.test_file}: ood set '{o}' has {r.kind} rows of shape {tuple(xo.shape[1:])}, "
                            f"source '{spec.source}' has {raw.kind} rows of shape {tuple(raw.shape)}")
        sel = np.arange(len(xo))
        if spec.n_test is not None:
            sel = np.sort(np.random.default_rng([spec.seed, 3, len(oods)]).permutation(len(xo))[: spec.n_test])
        oods[o] = (sel, xo[sel].astype(raw.dtype), r.y_test[sel], r)

    shape = tuple(int(v) for v in raw.shape)
    shards: dict[str, list] = {}
    counts: dict[str, int] = {}
    class_counts: dict[str, list] = {}
    for split in TRAIN_SPLITS:
        ii = idx[split]
        y = raw.y_train[ii]
        shards[split] = _write_split(tmp, split, ii, raw.x_train[ii], None if split == "unlabeled" else y,
                                     raw.kind, shape, spec.shard_rows)
        counts[split] = int(len(ii))
        class_counts[split] = _class_counts(y, k)
    shards["test"] = _write_split(tmp, "test", test_idx, raw.x_test[test_idx], raw.y_test[test_idx], raw.kind,
                                  shape, spec.shard_rows)
    counts["test"] = int(len(test_idx))
    class_counts["test"] = _class_counts(raw.y_test[test_idx], k)
    ood_meta = {}
    for o, (sel, xo, yo, r) in oods.items():
        split = f"ood/{o}"
        shards[split] = _write_split(tmp, split, sel, xo, yo, raw.kind, shape, spec.shard_rows)
        counts[split] = int(len(sel))
        class_counts[split] = _class_counts(yo, r.num_classes)
        ood_meta[o] = {"file": r.test_file, "num_classes": r.num_classes, "class_names": r.class_names}

    hidden = raw.y_train[idx["unlabeled"]].astype(np.int64)
    np.save(tmp / "unlabeled_labels.npy", hidden)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": spec.source,
        "spec": dataclasses.asdict(spec) | {"ood": list(spec.ood), "feature_columns": list(spec.feature_columns)},
        "key": key,
        "inputs": inputs,
        "source_files": {"train": raw.train_file, "test": raw.test_file},
        "kind": raw.kind,
        "shape": list(shape),
        "dtype": raw.dtype,
        "num_classes": k,
        "class_names": list(raw.class_names),
        "feature_names": raw.feature_names,
        "seed": spec.seed,
        "counts": counts,
        "class_counts": class_counts,
        "label_summary": f"{counts['labeled']} labeled + {counts['val']} validation "
                         f"(+{counts['unlabeled']} unlabeled, {counts['test']} test)",
        "schema": {"id": "int64", "x": f"fixed_size_list<{raw.dtype}>[{int(np.prod(shape))}]",
                   "y": "int64 (null = unlabeled)"},
        "shards": shards,
        "extra_files": {"unlabeled_labels.npy": {"sha256": S.file_sha256(tmp / "unlabeled_labels.npy"),
                                                 "note": "true labels of unlabeled rows (-1 unknown), aligned "
                                                         "with load_split(prepared, 'unlabeled'); evaluation only"}},
        "ood": ood_meta,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if raw.kind == "vector":
        tr = np.concatenate([raw.x_train[idx["labeled"]], raw.x_train[idx["unlabeled"]]]).astype(np.float64)
        mean, std = tr.mean(0), tr.std(0)
        std = np.where(std < 1e-8, 1.0, std)  # constant features: leave unscaled
        manifest["feature_mean"] = mean.tolist()
        manifest["feature_std"] = std.tolist()
    else:
        manifest["feature_mean"] = manifest["feature_std"] = None
    manifest["prepare_seconds"] = round(time.perf_counter() - t0, 3)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


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
    if _verify_shards(final, m):
        return None
    return m


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
        inputs = _fingerprint(spec)  # DataError when input files are missing
        if not force and (m := _matches(final, key, inputs)) is not None:
            return Prepared(final, m)
        tmp = data_root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = _build(spec, tmp, key, inputs, name)
            if final.exists():
                old = data_root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return Prepared(final, manifest)


# ----------------------------------------------------------------------------------------------- reading
def _read_shard(f: Path, kind: str, shape, verify: dict | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if verify is not None and (not f.is_file() or S.file_sha256(f) != verify["sha256"]):
        raise DataError(f"{f}: shard is corrupt, truncated or missing (checksum mismatch)")
    try:
        t = pq.read_table(f)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{f}: corrupt or truncated Parquet file ({str(e).splitlines()[0] if str(e) else e})") from None
    want = shard_schema(kind, shape)
    for fld in want:
        if fld.name not in t.column_names:
            raise DataError(f"{f}: missing column '{fld.name}'")
        if t.schema.field(fld.name).type != fld.type:
            raise DataError(f"{f}: column '{fld.name}' has type {t.schema.field(fld.name).type}, expected {fld.type}")
    extra = [c for c in t.column_names if c not in want.names]
    if extra:
        raise DataError(f"{f}: unexpected extra column '{extra[0]}'")
    return t


def load_split(prepared: Prepared, split: str, with_ids: bool = False, verify: bool = True):
    """``(x, y)`` (or ``(x, y, ids)``): x in the stored dtype shaped ``[N, *shape]``, y int64 with -1 for null."""
    d = prepared.split_dir(split)
    kind, shape = prepared.kind, prepared.shape
    shards = prepared.manifest["shards"][split]
    xs, ys, ids = [], [], []
    for sh in shards:
        t = _read_shard(prepared.root / sh["file"], kind, shape, sh if verify else None)
        xcol = t.column("x").combine_chunks()
        xs.append(xcol.flatten().to_numpy(zero_copy_only=False).reshape(len(t), *shape))
        ys.append(t.column("y").fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64))
        ids.append(t.column("id").to_numpy().astype(np.int64))
    dtype = np.uint8 if kind == "image" else np.float32
    if not shards:
        raise DataError(f"{d}: empty split '{split}'")
    x = np.concatenate(xs).astype(dtype, copy=False)
    y = np.concatenate(ys)
    return (x, y, np.concatenate(ids)) if with_ids else (x, y)


def load_unlabeled_labels(prepared: Prepared) -> np.ndarray:
    """True labels of the unlabeled rows (-1 where unknown), aligned with ``load_split(prepared, 'unlabeled')``.
    For evaluation of transductive accuracy only; never feed these to training."""
    return np.load(prepared.root / "unlabeled_labels.npy")


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.prepare --source mnist --data-dir ../shared/data --n-labeled 1000 --n-val 1000``"""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=main.__doc__)
    for f in dataclasses.fields(DataSpec):
        flag = "--" + f.name.replace("_", "-")
        if f.name in ("ood", "feature_columns"):
            ap.add_argument(flag, default="", help="comma-separated")
        elif f.type in ("int", int):
            ap.add_argument(flag, type=int, default=f.default)
        elif f.type in ("float", float):
            ap.add_argument(flag, type=float, default=f.default)
        elif "int" in str(f.type):
            ap.add_argument(flag, type=int, default=f.default)
        else:
            ap.add_argument(flag, default=f.default)
    ap.add_argument("--home", default=os.environ.get("FLOWGMM_HOME", "~/.flowgmm"))
    ap.add_argument("--force", action="store_true")
    a = vars(ap.parse_args(argv))
    home, force = a.pop("home"), a.pop("force")
    a["ood"] = tuple(s for s in a["ood"].split(",") if s)
    a["feature_columns"] = tuple(s for s in a["feature_columns"].split(",") if s)
    try:
        p = prepare(DataSpec(**a), home, force=force)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = p.manifest
    print(f"{p.root}\n{m['source']} {m['kind']} shape={m['shape']} dtype={m['dtype']} classes={m['num_classes']}: "
          f"{m['label_summary']}; " + ", ".join(f"{k}={v}" for k, v in m["counts"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
