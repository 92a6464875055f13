"""The scoring driver's memory: ``pipeline/score.py`` (Ray Data writes the scored rows; the driver never holds them)
against the same pipeline collecting the scored rows on the driver (``Dataset.to_pandas()``, then one Parquet file),
on N rows of a tabular model (breast_cancer: 30 features + id) in 16 Parquet shards.

    python bench/bench_score.py                                   # 1,000,000 rows; trains the smoke model once
    python bench/bench_score.py --rows 100000 --home /tmp/bench-score --json score.json

The model is trained (or reused from ``--home``) through the product: ``pipeline/run.py --config breast_cancer
--smoke``. The rows are drawn around the model's training feature mean and spread (in-domain, seeded) and written
once per row count. Each side runs in its own process; the figure is that driver process's peak resident memory
(``VmHWM`` in /proc/self/status, Ray's own processes not included) and its wall time. The table goes to stdout (the
block of bench/RESULTS.md) and its figures to ``bench/results/bench_score_<rows>_rows_<actors>_actors.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/bench_score.py`: import the project from this checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.record import write_result  # noqa: E402
from pipeline.core.atomic import atomic_dir, atomic_file, atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "models:/flowgmm-breast_cancer@champion"
MODES = ("product", "collect")


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ensure_model(home: Path) -> str:
    """The registered breast_cancer model in ``home``, trained through the product if it is not there yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    try:
        mlflow.MlflowClient().get_model_version_by_alias("flowgmm-breast_cancer", "champion")
        return MODEL
    except MlflowException:
        pass
    cmd = [sys.executable, str(REPO / "pipeline" / "run.py"), "--config", "breast_cancer", "--smoke"]
    cmd += ["--home", str(home)]
    print("[bench] training the model:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return MODEL


def write_input(home: Path, model_dir: str, rows: int, shards: int) -> Path:
    """``rows`` x the model's features + id in ``shards`` Parquet files (reused when already written)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = json.loads(next(Path(model_dir).rglob("spec.json")).read_text())
    names = list(spec["feature_columns"])
    mean, std = np.asarray(spec["feature_mean"]), np.asarray(spec["feature_std"])
    out = home / f"bench-score-input-{rows}x{shards}"
    if out.is_dir():
        return out
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, rows, shards + 1).astype(np.int64)
    with atomic_dir(out) as tmp:
        for i in range(shards):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            x = mean + std * rng.normal(size=(hi - lo, len(names)))
            cols = {"id": pa.array(np.arange(lo, hi))} | {n: pa.array(x[:, k]) for k, n in enumerate(names)}
            pq.write_table(pa.table(cols), tmp / f"part-{i:05d}.parquet")
    return out


def child(mode: str, score_args: list[str]) -> dict[str, Any]:
    """One side, in this (fresh) process: the product's command, or the same pipeline collected on the driver."""
    from pipeline.results import score

    t0 = time.perf_counter()
    if mode == "product":
        rc = score.main(score_args)
        rows = None
    else:
        rc, rows = 0, collect(score, score.parse_args(score_args))
    return {"mode": mode, "rc": rc, "rows": rows, "score_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}


def collect(score: Any, args: argparse.Namespace) -> int:
    """The old way: the same reads and actor pool, every scored row gathered on the driver, one file written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.home import resolve_home
    from pipeline.core.raycluster import connect, quiet
    from pipeline.results.tracking import default_tracking_uri

    quiet()
    model_dir, spec = score.load_spec(args.model, args.tracking_uri or default_tracking_uri(resolve_home(args.home)))
    plan = score.check_input(args.input, spec, args.image_column)
    connect(args.address)
    frame = score.scored_dataset(args, model_dir, plan).to_pandas()
    with atomic_file(args.output) as tmp:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    return len(frame)


def run_side(mode: str, score_args: list[str], env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--", *score_args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"[bench] {mode} failed (rc {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    out = json.loads(lines[-1])
    out["wall_s"] = wall
    out["console"] = [ln for ln in lines[:-1] if ln.strip()]
    return out


LABEL = {
    "product": "`pipeline/score.py` (sorted, then `write_parquet`)",
    "collect": "the same pipeline, `to_pandas()` on the driver, one file",
}


def markdown(rows: int, results: list[dict[str, Any]]) -> str:
    """The RESULTS.md table, then the product's own line (rows/s of its execution)."""
    lines = ["| side | rows | driver peak RSS | wall s | score s |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {LABEL[r['mode']]} | {rows:,} | {r['peak_rss_mib']:.0f} MiB | {r['wall_s']:.1f} | {r['score_s']:.1f} |"
        )
    for r in results:
        said = [ln.strip() for ln in r.get("console", []) if " scored " in ln]
        if said:
            lines.append(f"\nThe product printed `{said[-1]}`.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--home", default=None, help="where the model, the input and the outputs go (default: a temp dir)")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--modes", default=",".join(MODES), help="which sides to run, in order")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("score_args", nargs="*", help=argparse.SUPPRESS)
    add_dry_run(ap)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = build_parser().parse_args(argv)
    exit_if_dry_run(a)
    if a.child:
        print(json.dumps(child(a.child, a.score_args)), flush=True)
        return {}
    home = Path(a.home or tempfile.mkdtemp(prefix="bench-score-")).resolve()
    env = dict(os.environ, FLOWGMM_HOME=str(home), RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    os.environ.update(env)
    model = ensure_model(home)
    import mlflow

    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=model)
    inp = write_input(home, model_dir, a.rows, a.shards)
    results = []
    for mode in a.modes.split(","):
        out = home / f"scored-{mode}.parquet"
        args = ["--model", model, "--input", str(inp), "--output", str(out), "--home", str(home)]
        args += ["--actors", str(a.actors), "--batch-size", str(a.batch_size)]
        r = run_side(mode, args, env)
        r["rows"] = r["rows"] or a.rows
        results.append(r)
        print(f"[bench] {mode}: {r['peak_rss_mib']:.0f} MiB peak RSS, {r['wall_s']:.1f} s wall", flush=True)
    summary = {"rows": a.rows, "shards": a.shards, "actors": a.actors, "batch_size": a.batch_size, "results": results}
    if a.json:
        atomic_write_text(a.json, json.dumps(summary, indent=1))
    write_result(f"bench_score_{a.rows}_rows_{a.actors}_actors", summary, markdown(a.rows, results))
    return summary


if __name__ == "__main__":
    main()
