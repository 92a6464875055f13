"""A user's image folder through the product: preparing a large folder (images/s), the default job on a small one
(wall time, test accuracy against the anchors and the labels-only flow), and the embedding throughput of a backbone.

    python bench/bench_images.py --work /tmp/bench-images
    python bench/bench_images.py --work /tmp/bi --prep-images 6000 --skip-job --embed-images 64   # a quick look

1. Preparing: a folder of ``--prep-images`` MNIST PNGs (100 labeled per class, the rest unlabeled;
   ``bench/image_folder.py``) prepared by ``pipeline.data.prepare`` (``data.source=images``) on a running local Ray:
   listing, the header pass, the decode pass and the shards, timed from the call (Ray's start apart).
2. The job: the folder of the README's "Your own images" (28x28 grey, 10 classes, 30 labeled per class, 6,000
   unlabeled of which a tenth 32x32, a test folder of 1,000) through ``python pipeline/run.py --images DIR
   data.test_path=DIR-test`` with every default, in its own process; its figures read back from MLflow.
3. Embedding: ``python -m pipeline.data.embed`` with resnet18 at 224x224 over ``--embed-images`` images of the
   folder (weights ``none``: the same compute as the pretrained ones, which this machine cannot download), images/s
   of the run (the actor's start included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import add_dry_run, exit_if_dry_run  # noqa: E402
from bench.image_folder import write_folder  # noqa: E402
from bench.record import write_result  # noqa: E402

ANCHORS = ("logreg", "knn", "label_spreading", "self_training")


def prep(work: Path, n: int) -> dict[str, Any]:
    import ray

    from pipeline.config.data import DataSpec
    from pipeline.core.raycluster import connect
    from pipeline.data import prepare

    folder = work / f"prep-{n}"
    if not folder.exists():
        write_folder(folder, per_class=100, unlabeled=n - 1000, test=0)
    t = time.perf_counter()
    connect()
    ray_s = time.perf_counter() - t
    t = time.perf_counter()
    prepared = prepare(DataSpec(source="images", path=str(folder)), work / f"home-prep-{time.time_ns()}")
    s = time.perf_counter() - t
    count = sum(prepared.counts[k] for k in ("labeled", "val", "unlabeled", "test"))
    ray.shutdown()
    return {"images": count, "seconds": s, "images_per_s": count / s, "ray_start_s": ray_s}


def job(work: Path) -> dict[str, Any]:
    folder = work / "digits"
    if not folder.exists():
        write_folder(folder)
    home = work / "home-job"
    name = f"folder-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, str(ROOT / "pipeline" / "run.py"), "--images", str(folder), "--run-name", name]
    cmd += [f"data.test_path={folder}-test"]
    t = time.time()
    proc = subprocess.run(cmd, env={**os.environ, "FLOWGMM_HOME": str(home)}, capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise SystemExit(
            f"the folder job failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    m = client.search_runs(ids, filter_string=f"attributes.run_name = '{name}'")[0].data.metrics
    out = {"wall_s": wall, "command": " ".join(cmd[1:]), "console": proc.stdout[-4000:]}
    keys = ["test_accuracy_calibrated", "labels_only_flow_test_accuracy_calibrated", "train_steps", "train_seconds"]
    keys += [f"baseline_{a}_test_accuracy" for a in ANCHORS] + ["test_ece_calibrated", "time_prepare_s"]
    out.update({k: m[k] for k in keys if k in m})
    return out


def embedding(work: Path, n: int) -> dict[str, Any]:
    folder = work / f"embed-{n}"
    if not folder.exists():
        write_folder(folder, per_class=n // 20, unlabeled=n - 10 * (n // 20), test=0)
    cmd = [sys.executable, "-m", "pipeline.data.embed", "--images", str(folder), "--out", str(work / "emb.parquet")]
    cmd += ["--backbone", "resnet18", "--weights", "none", "--image-size", "224", "--cpus-per-actor", "2"]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - t
    if proc.returncode != 0:
        raise SystemExit(f"embedding failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if "embedded" in ln)
    rate = float(line.split("(")[1].split(" images/s")[0])
    return {"images": n, "images_per_s": rate, "wall_s": wall, "line": line}


def markdown(r: dict[str, Any]) -> str:
    out = []
    if "prep" in r:
        p = r["prep"]
        out.append(
            f"- preparing {p['images']:,} PNGs (28x28 grey, 10 classes): {p['seconds']:.1f} s, "
            f"**{p['images_per_s']:,.0f} images/s** (Ray's start, {p['ray_start_s']:.1f} s, apart)"
        )
    if "job" in r:
        j = r["job"]
        anchors = ", ".join(
            f"{a.replace('_', ' ')} {j[f'baseline_{a}_test_accuracy']:.3f}"
            for a in ANCHORS
            if f"baseline_{a}_test_accuracy" in j
        )
        out.append(
            f"- the 7,300-PNG folder on defaults: **{j['wall_s'] / 60:.1f} min** wall ({j['train_steps']:.0f} steps, "
            f"training {j['train_seconds']:.0f} s, preparing {j.get('time_prepare_s', 0):.0f} s); test accuracy "
            f"FlowGMM-cons **{j['test_accuracy_calibrated']:.3f}**, labels-only flow "
            f"{j['labels_only_flow_test_accuracy_calibrated']:.3f}, {anchors}; calibrated ECE "
            f"{j['test_ece_calibrated']:.3f}"
        )
    if "embed" in r:
        e = r["embed"]
        out.append(
            f"- embedding with resnet18 at 224x224, one actor on 2 cores: **{e['images_per_s']:.1f} images/s** "
            f"over {e['images']} images (the actor's start included; {e['wall_s']:.0f} s with the process)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="where the folders and homes are written")
    p.add_argument("--prep-images", type=int, default=60_000)
    p.add_argument("--embed-images", type=int, default=512)
    p.add_argument("--skip-job", action="store_true")
    add_dry_run(p)
    a = p.parse_args(argv)
    exit_if_dry_run(a, ["images"], ["data.path=/tmp/x"])
    a.work.mkdir(parents=True, exist_ok=True)
    r: dict[str, Any] = {"prep": prep(a.work, a.prep_images)}
    print(markdown(r), flush=True)
    if not a.skip_job:
        r["job"] = job(a.work)
        print(markdown({"job": r["job"]}), flush=True)
    r["embed"] = embedding(a.work, a.embed_images)
    write_result("bench_images", r, markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
