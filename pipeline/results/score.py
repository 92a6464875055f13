"""Score new data in batch with a registered FlowGMM: Ray Data reads the input, an actor pool (CPU or GPU) runs the
model, and ``write_parquet`` writes, for every row, the label, the class name, the calibrated class probabilities,
log p(x) and the OOD flag. No scored row passes through the driver, whose memory stays bounded whatever the input
size (bench/bench_score.py measures it).

    python pipeline/score.py --model models:/flowgmm-digits@champion --input new.parquet --output scored.parquet
    python pipeline/score.py --model runs:/<run_id>/model --input table.csv --output scored.csv --actors 2
    python pipeline/score.py --model models:/flowgmm-images-photos-1a2b3c4d@champion --input photos-new/ --output s.csv
    ray job submit --working-dir . -- python pipeline/score.py --model ... --input s3://bucket/new/ \\
        --output s3://bucket/scored.parquet

Input: any path or URI pyarrow opens (local, ``file://``, ``s3://``, ``gs://``, ``hdfs://``...): a Parquet file, a
directory of Parquet shards, or CSV (a name ending in ``.csv``). Images: a column ``x`` of flattened uint8 pixels
(the prepared-shard layout) or ``--image-column NAME``, or a folder of image files (PNG, JPEG, ...; an ``--images``
folder's layout: its rows carry ``path`` and ``input_label``, the class folder), decoded to the model's size and
channels by the read tasks; tables: the feature columns the model was trained on.
Columns ``id``, ``y`` and the label column (the model's ``label_column``, default ``label``: ground truth, kept beside
the prediction) pass through, and any others named by ``--keep a,b``; an input column whose name an output column
already has (e.g. ``label``) is written as ``input_<name>``, so nothing the user gave is dropped or overwritten. Every
input file's schema is checked before Ray starts: bad input gets one line naming the file and the column, and exit 2.

Output: a directory of Parquet (or, for a name ending in ``.csv``, CSV) files, rows in input order (files in path
order). A local output is written to a temporary directory beside it and renamed into place when complete; a remote
one is written in place and gets a ``_SUCCESS`` marker when complete. The row count comes from the written files.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.core.atomic import atomic_dir
from pipeline.core.cli import add_cluster_options, add_store_options
from pipeline.core.errors import DataError, data_error
from pipeline.core.home import resolve_home
from pipeline.core.location import Location, locate
from pipeline.core.raycluster import connect, quiet

PASS_THROUGH = ("id", "y")  # and the model's label column, and --keep
INPUT_PREFIX = "input_"  # a passed-through column whose name an output column has: input_<name>
SUCCESS = "_SUCCESS"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline/score.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/flowgmm-digits@champion")
    p.add_argument("--input", required=True, help="Parquet file/directory or CSV file: a path or a URI (s3://...)")
    p.add_argument(
        "--output", required=True, help="output directory ending in .parquet or .csv: a path or a URI (s3://...)"
    )
    add_store_options(p)
    p.add_argument("--image-column", default="x", help="column holding flattened uint8 pixels (image models)")
    p.add_argument(
        "--keep",
        type=lambda v: [c.strip() for c in v.split(",") if c.strip()],
        default=[],
        metavar="A,B",
        help="input columns to pass through beside the predictions (as input_<name> where an output has the name)",
    )
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--actors", type=int, default=1, help="size of the scoring actor pool")
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=0.5,
        help="CPUs reserved per actor; keep actors x cpus below the cluster's CPUs so Ray Data can read",
    )
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--verbose", action="store_true", help="Ray's and MLflow's own logs")
    add_cluster_options(p, storage=False)
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Piece:
    """One read task: a Parquet row group (or a whole CSV file) and the order key of its first row. Keys increase
    with the input order (files in path order, rows in file order), so sorting on them restores it whatever order
    the actor pool returns its batches in (Ray Data does not promise an actor pool's order, even with
    ``preserve_order``)."""

    path: str
    row_group: int  # -1: a whole CSV file; -2: the images ``paths`` of an image folder
    first: int
    paths: tuple[str, ...] = ()  # image folders: the files of this piece
    labels: tuple[str, ...] = ()  # ... and the class folder each is in ('' when none)


CSV_KEY_STRIDE = 1 << 40  # CSV row counts are unknown before reading: file i's rows get keys i * 2**40 + row


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the schema check found: the input files (in order), their format, the feature columns, the
    pass-through columns every file has, and the row count when the format states it (Parquet footers)."""

    loc: Location
    files: list[str]
    fmt: str
    columns: list[str]
    passthrough: list[str]
    rows: int | None
    pieces: list[Piece]


def input_files(loc: Location, fmt: str) -> list[str]:
    """The input's data files in path order: the file itself, or the directory's ``.<fmt>`` files (recursively,
    skipping names that start with ``_`` or ``.``, as Spark/Hive markers and temporaries do)."""
    import pyarrow.fs as pafs

    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError as e:
        raise DataError(f"{loc.uri}: cannot read ({e})") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{loc.uri}: input does not exist")
    if info.type == pafs.FileType.File:
        return [loc.path]
    files = data_files(loc, fmt)
    if not files:
        raise DataError(f"{loc.uri}: no .{fmt} files")
    return files


def data_files(loc: Location, fmt: str) -> list[str]:
    """A directory's ``.<fmt>`` files, recursively, in path order (maybe none)."""
    import pyarrow.fs as pafs

    infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(f".{fmt}")
        and not any(part[:1] in ("_", ".") for part in i.path[len(loc.path) :].split("/") if part)
    )


def _parquet_footer(loc: Location, path: str) -> tuple[Any, list[int]]:
    """A Parquet file's schema and the row count of each of its row groups."""
    import pyarrow.parquet as pq

    try:
        with loc.fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
            return meta.schema.to_arrow_schema(), [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{_shown(loc, path)}: truncated or corrupt Parquet file ({type(e).__name__}: {e})") from None


def _csv_header(loc: Location, path: str) -> tuple[Any, list[int] | None]:
    import pyarrow.csv as pcsv

    try:
        with loc.fs.open_input_stream(path) as f:
            return pcsv.open_csv(f).schema, None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{_shown(loc, path)}: not a readable CSV file ({type(e).__name__}: {e})") from None


def _shown(loc: Location, path: str) -> str:
    """A file as the user would name it: the path for local files, scheme://path for remote ones."""
    if loc.local or "://" not in loc.uri:
        return path
    return f"{loc.uri.split('://', 1)[0]}://{path}"


def check_input(uri: str, spec: dict[str, Any], image_column: str, keep: list[str] | None = None) -> Plan:
    """Every input file's schema (Parquet footers, CSV headers) against the model, before any Ray Data work;
    ``keep``: columns every file must have, passed through."""
    loc = locate(uri)
    fmt = "csv" if loc.path.endswith(".csv") else "parquet"
    if spec["kind"] == "image" and not loc.path.endswith((".csv", ".parquet")) and _images_input(loc):
        return image_plan(loc, image_column, keep)
    files = input_files(loc, fmt)
    read: Callable[[Location, str], tuple[Any, list[int] | None]] = _csv_header if fmt == "csv" else _parquet_footer
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        heads = list(pool.map(lambda f: read(loc, f), files))
    cols: list[str] = []
    for f, (schema, _) in zip(files, heads):
        cols = check_columns(_shown(loc, f), schema, spec, image_column)
    for c in keep or []:
        for f, (schema, _) in zip(files, heads):
            if c not in schema.names:
                raise DataError(f"{_shown(loc, f)}: --keep column '{c}' is not in the input (columns: {schema.names})")
    label = spec.get("label_column", "label")
    optional = [c for c in (*PASS_THROUGH, label) if all(c in schema.names for schema, _ in heads)]
    extra = list(dict.fromkeys([*(c for c in optional if c not in cols), *(keep or [])]))  # a kept feature too
    if fmt == "csv":
        pieces = [Piece(f, -1, i * CSV_KEY_STRIDE) for i, f in enumerate(files)]
        return Plan(loc, files, fmt, cols, extra, None, pieces)
    pieces, rows = [], 0
    for f, (_, groups) in zip(files, heads):
        for g, n in enumerate(groups or []):
            pieces.append(Piece(f, g, rows))
            rows += int(n)
    return Plan(loc, files, fmt, cols, extra, rows, pieces)


IMAGES_PER_PIECE = 256
UNLABELED_DIR = "unlabeled"  # an image in this folder has no label, as in training (data.unlabeled_dir)


def _images_input(loc: Location) -> bool:
    """An image file, or a folder without Parquet files (images to decode), as opposed to a table input."""
    import pyarrow.fs as pafs

    from pipeline.data.sources.folder import image_extensions

    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError:
        return False
    if info.type == pafs.FileType.File:
        return "." + loc.path.rsplit(".", 1)[-1].lower() in image_extensions()
    return info.type == pafs.FileType.Directory and not data_files(loc, "parquet")


def image_plan(loc: Location, image_column: str, keep: list[str] | None) -> Plan:
    """An image folder (a folder of images, or one image): every image file in path order, read and decoded by the
    read tasks; its path and class folder (``label``, empty at the top level and in ``unlabeled/``) pass through."""
    import pyarrow.fs as pafs

    from pipeline.data.sources.folder import image_extensions

    if keep:
        raise DataError(f"{loc.uri}: --keep names columns, an image folder has none (its rows carry path and label)")
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:  # one image
        infos, root = [info], loc.path.rsplit("/", 1)[0]
    else:
        infos, root = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True)), loc.path
    exts = image_extensions()
    files, labels = [], []
    for i in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        rel = i.path[len(root) :].strip("/").split("/")
        if any(p.startswith((".", "_")) for p in rel) or "." + rel[-1].rsplit(".", 1)[-1].lower() not in exts:
            continue
        files.append(i.path)
        labels.append(rel[0] if len(rel) > 1 and rel[0] != UNLABELED_DIR else "")
    if not files:
        raise DataError(f"{loc.uri}: no images and no .parquet files to score")
    pieces = [
        Piece(files[s], -2, s, tuple(files[s : s + IMAGES_PER_PIECE]), tuple(labels[s : s + IMAGES_PER_PIECE]))
        for s in range(0, len(files), IMAGES_PER_PIECE)
    ]
    return Plan(loc, files, "images", [image_column], ["path", "label"], len(files), pieces)


def check_columns(name: str, schema: Any, spec: dict[str, Any], image_column: str) -> list[str]:
    """One file's schema against the model; returns the feature columns to read."""
    import pyarrow as pa

    names = list(schema.names)
    if spec["kind"] == "image":
        if image_column not in names:
            raise DataError(f"{name}: missing image column '{image_column}' (columns: {names})")
        d = int(np.prod(spec["shape"]))
        t = schema.field(image_column).type
        if not (pa.types.is_fixed_size_list(t) and t.list_size == d) and not pa.types.is_list(t):
            raise DataError(f"{name}: column '{image_column}' has type {t}, expected a list of {d} uint8 pixels")
        return [image_column]
    cols = _serving().input_columns(spec)
    missing = [c for c in cols if c not in names]
    if missing:
        needs = cols if len(cols) <= 6 else [*cols[:3], "...", *cols[-2:]]
        raise DataError(f"{name}: missing feature column '{missing[0]}' (the model needs {len(cols)}: {needs})")
    text = {e["column"] for e in spec.get("encoding") or [] if e["kind"] == "category"}
    for c in cols:
        t = schema.field(c).type
        if c not in text and not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
            raise DataError(f"{name}: column '{c}' has type {t}, expected numbers")
    return cols


def _serving() -> Any:
    """``pipeline.results.serving`` without MLflow's import-time advice about type hints on the console."""
    import warnings

    with warnings.catch_warnings():  # restores showwarning; MLflow forces its own "once" filter around the advice
        warnings.showwarning = lambda *a, **k: None
        from pipeline.results import serving
    return serving


def check_output(uri: str) -> tuple[Location, str]:
    """The output location and format (``parquet`` or ``csv``, from the name), checked before any work."""
    loc = locate(uri)
    suffix = Path(loc.path).suffix
    if suffix not in (".parquet", ".csv"):
        raise DataError(f"{uri}: output must end in .parquet or .csv (it is a directory of such files)")
    import pyarrow.fs as pafs

    if loc.fs.get_file_info(loc.path).type == pafs.FileType.File:
        raise DataError(f"{uri}: output exists and is a file (the output is a directory of {suffix} files)")
    return loc, suffix[1:]


def load_spec(model_uri: str, tracking_uri: str) -> tuple[str, dict[str, Any]]:
    """Download the model once (driver side) and read its JSON spec: shape, kind, feature names, classes."""
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    except (MlflowException, OSError) as e:
        msg = getattr(e, "message", None) or str(e)
        raise DataError(f"{model_uri}: cannot load the model from {tracking_uri} ({msg})") from None
    specs = sorted(Path(local).rglob("spec.json"))
    if not specs:
        raise DataError(f"{model_uri}: not a flowgmm model (no spec.json among its artifacts)")
    return str(specs[0].parent), json.loads(specs[0].read_text())


class Scorer:
    """One actor of the pool: loads the model once (onto CUDA when the actor has a GPU), scores NumPy batches;
    ``source`` names the input in error messages."""

    def __init__(self, model_dir: str, image_column: str, source: str, passthrough: tuple[str, ...] = ()) -> None:
        import torch

        from flowgmm.spec import load

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.spec = load(model_dir, map_location=device)
        self.model.to(device)
        self.model.set_variance_scale(float(self.spec.get("variance_scale", 1.0)))
        self.threshold = float(self.spec.get("ood_threshold", -np.inf))
        self.names = self.spec.get("class_names") or [str(i) for i in range(self.spec["num_classes"])]
        self.image_column = image_column
        self.source = source
        self.passthrough = passthrough

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        x = self.features(batch)
        out = _serving().predict_frame(self.model, self.spec, self.names, self.threshold, x)
        outputs = set(out.columns)
        for c in self.passthrough:
            out.insert(0 if c == "id" else len(out.columns), passed_name(c, outputs), batch[c])
        out[ORDER] = batch[ORDER]  # every batch comes from read_piece
        return out

    def features(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.spec["kind"] == "image":
            col = batch[self.image_column]
            return col if col.dtype != object else np.stack([np.asarray(v, dtype=np.uint8) for v in col])
        if self.spec.get("encoding"):  # text one-hot, gaps imputed, as in training (pipeline.data.encoding)
            from pipeline.data.encoding import transform

            return transform(
                {c: batch[c] for c in _serving().input_columns(self.spec)}, self.spec["encoding"], self.source
            )
        cols = _serving().feature_names(self.spec)
        x = np.stack([np.asarray(batch[c], dtype=np.float64) for c in cols], axis=1)
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = (int(v[0]) for v in np.nonzero(bad))
            where = f"row id {batch['id'][r]}" if "id" in batch else f"row {r} of a batch (no 'id' column)"
            raise DataError(f"{self.source}: column '{cols[c]}' has a NaN or infinite value ({x[r, c]}) at {where}")
        return x.astype(np.float32)


def passed_name(column: str, outputs: set[str]) -> str:
    """The output name of a passed-through input column: itself, or ``input_<name>`` where an output has its name.

    >>> passed_name("label", {"label", "class"}), passed_name("note", {"label"})
    ('input_label', 'note')
    """
    return f"{INPUT_PREFIX}{column}" if column in outputs else column


ORDER = "__order"  # the order key column: added at read, sorted on after scoring, dropped before writing


def read_piece(batch: dict[str, np.ndarray], fs: Any, fmt: str, columns: list[str], source: str, shape=None) -> Any:
    """A read task: the rows of one ``Piece`` with their order keys (a pyarrow table)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    path, group, first = str(batch["path"][0]), int(batch["row_group"][0]), int(batch["first"][0])
    if fmt == "images":
        table = read_images(list(batch["paths"][0]), list(batch["labels"][0]), fs, shape, columns[0])
        return table.append_column(ORDER, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))
    try:
        if fmt == "csv":
            with fs.open_input_stream(path) as f:
                table = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(include_columns=columns))
        else:
            with fs.open_input_file(path) as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=columns)
    except Exception as e:  # noqa: BLE001  a file that changed or broke after the schema check
        raise DataError(f"{source}: cannot read {path} ({type(e).__name__}: {e})") from None
    return table.append_column(ORDER, pa.array(np.arange(first, first + table.num_rows, dtype=np.int64)))


def read_images(paths: list[str], labels: list[str], fs: Any, shape, column: str) -> Any:
    """Image files decoded to the model's shape (``pipeline.data.images``): columns ``column`` (uint8 pixels),
    ``path`` and ``label`` (the class folder, null when none); a bad image is a DataError naming it."""
    import pyarrow as pa

    from pipeline.data.images import ImageError, decode_image

    rows = []
    for p in paths:
        try:
            with fs.open_input_file(p) as f:
                rows.append(decode_image(f.read(), shape).reshape(-1))
        except (ImageError, OSError) as e:
            raise DataError(f"{p}: truncated or unreadable image: {e}") from None
    d = int(np.prod(shape))
    flat = pa.array(np.concatenate(rows) if rows else np.zeros(0, np.uint8), type=pa.uint8())
    return pa.table(
        {
            column: pa.FixedSizeListArray.from_arrays(flat, d),
            "path": pa.array(paths, pa.string()),
            "label": pa.array([lab or None for lab in labels], pa.string()),
        }
    )


def scored_dataset(args: argparse.Namespace, model_dir: str, plan: Plan, shape=None) -> Any:
    """The lazy Ray Data pipeline: one read task per piece (row group or CSV file) -> the actor pool -> a sort on
    the order key (the input order) -> the scored rows without the key."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    keep = list(dict.fromkeys(plan.columns + plan.passthrough))
    units = [dataclasses.asdict(p) for p in plan.pieces]
    ds = ray.data.from_items(units, override_num_blocks=max(1, len(units))).map_batches(
        read_piece, batch_size=1, batch_format="numpy", fn_args=(plan.loc.fs, plan.fmt, keep, plan.loc.uri, shape)
    )
    scored = ds.map_batches(
        Scorer,
        fn_constructor_args=(model_dir, args.image_column, plan.loc.uri, tuple(plan.passthrough)),
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=args.actors),
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor or None,
    )
    return scored.sort(ORDER).drop_columns([ORDER])


def write_output(ds: Any, out: Location, fmt: str) -> int:
    """Ray Data writes the files; a local output appears whole (temporary directory, then rename), a remote one
    gets ``_SUCCESS`` last. Returns the row count read from the written files."""
    if out.local:
        with atomic_dir(out.path) as tmp:
            _write(ds, str(tmp), fmt, None)
            return count_rows(Location(out.fs, str(tmp), str(tmp)), fmt)
    import pyarrow.fs as pafs
    from ray.data import SaveMode

    marker = f"{out.path}/{SUCCESS}"
    if out.fs.get_file_info(marker).type != pafs.FileType.NotFound:  # a previous complete output is replaced
        out.fs.delete_file(marker)
    _write(ds, out.path, fmt, out.fs, mode=SaveMode.OVERWRITE)
    rows = count_rows(out, fmt)
    with out.fs.open_output_stream(marker) as f:
        f.write(f"{rows}\n".encode())
    return rows


def _write(ds: Any, path: str, fmt: str, fs: Any, **kwargs: Any) -> None:
    if fmt == "csv":
        ds.write_csv(path, filesystem=fs, **kwargs)
    else:
        ds.write_parquet(path, filesystem=fs, **kwargs)


def count_rows(loc: Location, fmt: str) -> int:
    """Rows in the written files: Parquet footers, or CSV streamed block by block (never all in memory)."""
    import pyarrow.csv as pcsv

    files = data_files(loc, fmt)  # an empty input may leave no file at all
    if fmt == "parquet":
        return sum(sum(_parquet_footer(loc, f)[1]) for f in files)
    total = 0
    for f in files:
        with loc.fs.open_input_stream(f) as s:
            total += sum(b.num_rows for b in pcsv.open_csv(s))
    return total


def score(args: argparse.Namespace) -> dict[str, float]:
    from pipeline.results.tracking import default_tracking_uri, ensure_store

    if not args.verbose:
        quiet()
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failed UDF's trace: main prints one line
    home = resolve_home(args.home)
    uri = args.tracking_uri or default_tracking_uri(home)
    ensure_store(uri, home)  # a new store keeps MLflow's Default artifacts under the home, not the working directory
    out, fmt = check_output(args.output)
    model_dir, spec = load_spec(args.model, uri)
    plan = check_input(args.input, spec, args.image_column, args.keep)
    connect(args.address, verbose=args.verbose)
    t0 = time.time()
    rows = write_output(scored_dataset(args, model_dir, plan, tuple(spec["shape"])), out, fmt)
    seconds = time.time() - t0
    if plan.rows is not None and rows != plan.rows:
        raise DataError(f"{args.output}: wrote {rows} rows for {plan.rows} input rows")
    stats = {"rows": float(rows), "files": float(len(plan.files)), "seconds": seconds}
    stats["rows_per_s"] = rows / max(seconds, 1e-9)
    print(
        f"[flowgmm] scored {rows} rows from {len(plan.files)} file(s) in {seconds:.1f} s "
        f"({stats['rows_per_s']:.0f} rows/s) -> {args.output}",
        flush=True,
    )
    return stats


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        score(args)
    except Exception as e:  # noqa: BLE001  a worker's DataError arrives wrapped in Ray's exceptions
        err = data_error(e)
        if err is None:
            raise
        msg = str(err).splitlines()[-1] if str(err).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0
