"""Score new data in batch with a registered FlowGMM: Ray Data ``map_batches`` over an actor pool (CPU or GPU),
writing, for every row, the label, the calibrated class probabilities, log p(x) and the OOD flag.

    python pipeline/score.py --model models:/flowgmm-digits@champion --input new.parquet --output scored.parquet
    python pipeline/score.py --model runs:/<run_id>/model --input table.csv --output scored.csv --actors 2
    ray job submit --working-dir . -- python pipeline/score.py --model ... --input s3://... --output /shared/out

Input: Parquet (a file or a directory of shards) or CSV. Images: a column ``x`` of flattened uint8 pixels (the
prepared-shard layout) or ``--image-column NAME``; tables: the feature columns the model was trained on. Columns
``id`` and ``y`` pass through when present. Bad input gets a one-line error naming the file and column and exit 2;
the output appears only when complete (written to a temporary path, then renamed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.atomic import atomic_file
from pipeline.core.cli import add_cluster_options, add_store_options
from pipeline.core.errors import DataError
from pipeline.core.home import resolve_home
from pipeline.core.raycluster import connect

PASS_THROUGH = ("id", "y")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline/score.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="MLflow model URI, e.g. models:/flowgmm-digits@champion")
    p.add_argument("--input", required=True, help="Parquet file/directory or CSV file")
    p.add_argument("--output", required=True, help="output .parquet or .csv file (written atomically)")
    add_store_options(p)
    p.add_argument("--image-column", default="x", help="column holding flattened uint8 pixels (image models)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--actors", type=int, default=1, help="size of the scoring actor pool")
    p.add_argument(
        "--cpus-per-actor",
        type=float,
        default=0.5,
        help="CPUs reserved per actor; keep actors x cpus below the cluster's CPUs so Ray Data can read",
    )
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    add_cluster_options(p, storage=False)
    return p.parse_args(argv)


def load_spec(model_uri: str, tracking_uri: str) -> tuple[str, dict[str, Any]]:
    """Download the model once (driver side) and read its JSON spec: shape, kind, feature names, classes."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    except MlflowException as e:
        raise DataError(f"{model_uri}: cannot load the model from {tracking_uri} ({e.message})") from None
    specs = list(Path(local).rglob("spec.json"))
    if not specs:
        raise DataError(f"{model_uri}: not a flowgmm model (no spec.json among its artifacts)")
    return local, json.loads(specs[0].read_text())


def check_input(path: str, spec: dict[str, Any], image_column: str) -> list[str]:
    """Validate the input's schema against the model; returns the feature columns to read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.results.serving import feature_names

    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: input does not exist")
    if path.endswith(".csv"):
        try:
            names = pd.read_csv(path, nrows=5).columns.tolist()
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a readable CSV file ({type(e).__name__}: {e})") from None
        types: dict[str, Any] = {}
    else:
        files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
        if not files:
            raise DataError(f"{path}: no .parquet files")
        schema = None
        for f in files:
            try:
                pf = pq.ParquetFile(f)
                _ = pf.metadata.num_rows
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{f}: truncated or corrupt Parquet file ({type(e).__name__}: {e})") from None
            schema = schema or pf.schema_arrow
        names, types = schema.names, {n: schema.field(n).type for n in schema.names}
    if spec["kind"] == "image":
        if image_column not in names:
            raise DataError(f"{path}: missing image column '{image_column}' (columns: {names})")
        d = int(np.prod(spec["shape"]))
        t = types.get(image_column)
        if t is not None and not (pa.types.is_fixed_size_list(t) and t.list_size == d) and not pa.types.is_list(t):
            raise DataError(f"{path}: column '{image_column}' has type {t}, expected a list of {d} uint8 pixels")
        return [image_column]
    cols = feature_names(spec)
    missing = [c for c in cols if c not in names]
    if missing:
        raise DataError(f"{path}: missing feature column '{missing[0]}' (the model needs {cols})")
    for c in cols:
        t = types.get(c)
        if t is not None and not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise DataError(f"{path}: column '{c}' has type {t}, expected numbers")
    return cols


class Scorer:
    """One actor of the pool: loads the model once, scores pandas batches."""

    def __init__(self, model_dir: str, image_column: str):
        import torch

        from flowgmm.spec import load

        spec_path = next(Path(model_dir).rglob("spec.json"))
        self.model, self.spec = load(spec_path.parent)
        self.model.set_variance_scale(float(self.spec.get("variance_scale", 1.0)))
        self.threshold = float(self.spec.get("ood_threshold", -np.inf))
        self.names = self.spec.get("class_names") or [str(i) for i in range(self.spec["num_classes"])]
        self.image_column = image_column
        if torch.cuda.is_available():
            self.model.cuda()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from pipeline.results.serving import feature_names, predict_frame

        if self.spec["kind"] == "image":
            x = np.stack([np.asarray(v, dtype=np.uint8) for v in batch[self.image_column]])
        else:
            x = batch[feature_names(self.spec)].to_numpy(np.float32)
        if not np.isfinite(x.astype(np.float64)).all():
            raise DataError("input has NaN or infinite feature values")
        out = predict_frame(self.model, self.spec, self.names, self.threshold, x)
        for c in PASS_THROUGH:
            if c in batch.columns:
                out.insert(0 if c == "id" else len(out.columns), c, batch[c].to_numpy())
        return out


def score(args: argparse.Namespace) -> dict[str, float]:
    import ray

    from pipeline.results.tracking import default_tracking_uri

    home = resolve_home(args.home)
    uri = args.tracking_uri or default_tracking_uri(home)
    model_dir, spec = load_spec(args.model, uri)
    cols = check_input(args.input, spec, args.image_column)
    out = Path(args.output)
    if out.suffix not in (".parquet", ".csv"):
        raise DataError(f"{args.output}: output must end in .parquet or .csv")
    connect(args.address)
    keep = cols + [c for c in PASS_THROUGH if c not in cols]
    if args.input.endswith(".csv"):
        ds = ray.data.read_csv(args.input)
    else:
        ds = ray.data.read_parquet(args.input)
    present = [c for c in keep if c in ds.schema().names]
    t0 = time.time()
    scored = ds.select_columns(present).map_batches(
        Scorer,
        fn_constructor_args=(model_dir, args.image_column),
        batch_size=args.batch_size,
        batch_format="pandas",
        concurrency=args.actors,
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor or None,
    )
    frame = scored.to_pandas()
    seconds = time.time() - t0
    if "id" in frame.columns:
        frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    _atomic_write(frame, out)
    stats = {"rows": float(len(frame)), "seconds": seconds, "rows_per_s": len(frame) / max(seconds, 1e-9)}
    print(
        f"[flowgmm] scored {len(frame)} rows in {seconds:.1f} s ({stats['rows_per_s']:.0f} rows/s) -> {out}", flush=True
    )
    return stats


def _atomic_write(frame: pd.DataFrame, out: Path) -> None:
    with atomic_file(out) as tmp:
        if out.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        score(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  a worker's DataError arrives wrapped
        if "DataError" in type(e).__name__ or "DataError" in str(e):
            msg = str(e).strip().splitlines()[-1]
            print(f"error: {args.input}: {msg.split('DataError:')[-1].strip()}", file=sys.stderr)
            return 2
        raise
    return 0
