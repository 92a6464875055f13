"""Parquet shards of a prepared split: the schema (``id`` int64, ``x`` fixed-size list of uint8 pixels or float32
features, ``y`` int64 with null for unlabeled), writing a split, and reading it back with checks that name the file.

    x, y = load_split(prepared, "val")      # x [N, *shape] in the stored dtype, y int64 (-1 = unlabeled)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data import sources as S
from pipeline.data.manifest import Prepared


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
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("x", pa.list_(vt, int(np.prod(shape))), nullable=False),
            pa.field("y", pa.int64(), nullable=True),
        ]
    )


def write_split(root: Path, split: str, ids, x, y, kind, shape, shard_rows: int) -> list[dict]:
    import pyarrow.parquet as pq

    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    out = []
    n = len(ids)
    for i, s in enumerate(range(0, n, shard_rows)):
        e = min(n, s + shard_rows)
        tab = _arrow_table(
            ids[s:e],
            x[s:e],
            None if y is None else y[s:e],
            kind,
            shape,
            {"split": split, "kind": kind, "shape": list(shape)},
        )
        f = d / f"part-{i:05d}.parquet"
        pq.write_table(tab, f, row_group_size=min(shard_rows, 1024), compression="snappy")
        out.append({"file": f"{split}/{f.name}", "rows": e - s, "bytes": f.stat().st_size, "sha256": S.file_sha256(f)})
    return out


def read_shard(f: Path, kind: str, shape, verify: dict | None = None):
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
        t = read_shard(prepared.root / sh["file"], kind, shape, sh if verify else None)
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
