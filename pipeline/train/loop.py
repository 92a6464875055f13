"""The per-worker training loop (Ray Train; DDP with several workers, or in the driver process with none).

Reads top to bottom: build the engine (model, fast path, optimizer), restore the latest checkpoint when this is a
restart or a resumed run, then take ``train.steps`` FlowGMM steps on batches from the stream; every ``log_every``
steps (and at every evaluation point) check the loss is finite over all ranks and print one progress line, every
``eval_every`` steps (and at the last) validate, report and checkpoint. A non-finite loss ends the loop with
``{"nonfinite_step": N, "checked_at": M}`` as its return value: a deterministic failure, which the driver turns
into an error instead of letting Ray Train retry it. Each rank draws its own noise (generators seeded from seed
and rank, saved and restored per rank). One flag, ``is_main`` (rank 0), gates every side effect: checkpoints,
MLflow and the console.

Launch (through the pipeline, which prepares data and sets up MLflow first):

    python pipeline/run.py --config digits
    ray job submit --working-dir . -- python pipeline/run.py --config mnist
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch

from flowgmm.metrics import selection_score
from pipeline.config import Config
from pipeline.data.manifest import Prepared
from pipeline.data.stream import SSLStream
from pipeline.train.engine import Engine
from pipeline.train.state import CheckpointStore
from pipeline.train.validate import validate


def train_loop_per_worker(loop: dict[str, Any]) -> dict[str, int] | None:
    """The Ray Train function. ``loop``: config (dict), prepared, spec (the model spec), val (x, y), label (for the
    console), mlflow (tracking URI + run id, or None), store (checkpoint root in local mode), resume, verbose,
    compile_cache, failure_marker (fault-injection tests)."""
    t_enter = time.time()
    w = Worker(loop)
    w.restore()
    w.startup = {"trainer_start_s": t_enter - loop.get("fit_started", t_enter)}
    t_pull = time.time()
    for batch in w.stream.batches(start=w.engine.step):
        if "data_pull_s" not in w.startup:  # the first batch: rows pulled from Ray Data onto the device
            w.startup["data_pull_s"] = time.time() - t_pull
        _maybe_inject_failure(w.t, w.engine.step, w.rank, loop.get("failure_marker"))
        w.engine.train_step(batch)
        step = w.engine.step
        if step % w.t.log_every == 0 or step % w.t.eval_every == 0 or step == w.t.steps:
            bad = w.engine.first_bad_step()  # the same steps on every rank: a collective, the same answer
            if bad >= 0:
                return {"nonfinite_step": bad, "checked_at": step}
        if step % w.t.eval_every == 0 or step == w.t.steps:
            w.evaluate_and_report()
        if w.is_main and (step % w.t.log_every == 0 or step == w.t.steps):
            w.progress()
        if step >= w.t.steps:
            break
    return None


class Worker:
    """One training worker: its engine, data stream, validation, reports and console line."""

    def __init__(self, loop: dict[str, Any]):
        self.loop = loop
        self.cfg = cfg = Config.from_dict(loop["config"])
        self.t = cfg.train
        self.prepared: Prepared = loop["prepared"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.is_main = self.rank == 0
        self.local_mode = loop.get("store") is not None
        if not loop.get("verbose"):
            _quiet_ray_train()
        self.device = ray.train.torch.get_device()
        if self.local_mode:  # the driver's threads, as Ray gives a worker: its CPUs (whole ones, at least one)
            _torch_threads(max(1, int(self.t.cpus_per_worker)))
        _torch_seed(self.t.seed)
        self.engine = Engine(
            loop["spec"], cfg, self.device, compile_cache=loop.get("compile_cache"), rank=self.rank, world=self.world
        )
        method = self.t.method
        self.stream = SSLStream(
            self.prepared,
            cfg.ingest,
            world_size=self.world,
            rank=self.rank,
            seed=self.t.seed,
            device=self.device,
            unlabeled=method != "labels_only",
            second_view=method == "flowgmm_cons",
        )
        self.val_x, self.val_y = loop["val"]
        self.tracker = _RankZeroTracker(loop.get("mlflow")) if self.is_main else None
        self.store = CheckpointStore(loop["store"]) if self.local_mode else None
        self.evals = 0
        self.last_val: dict[str, float] = {}
        self.startup: dict[str, float] = {}

    def restore(self) -> None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None and self.store is not None and self.loop.get("resume"):
            latest = self.store.latest()
            checkpoint = self.store.checkpoint(latest) if latest else None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                st = self.engine.load(d)
            self.evals = int(st.get("evals", 0))
            if self.is_main:
                print(f"[flowgmm] {self.loop.get('label', 'train')}: resumed from step {self.engine.step}", flush=True)
        if self.world > 1:
            self.engine.distribute(ray.train.torch.prepare_model)
        self.t_start, self.step_start = time.time(), self.engine.step

    def evaluate_and_report(self) -> None:
        """Validation (rank 0), the report every worker makes, a checkpoint every ``checkpoint_every`` reports."""
        e, t = self.engine, self.t
        self.evals += 1
        means = e.pop_means()
        metrics: dict[str, float] = {
            "step": e.step,
            "epoch": e.step / self.stream.steps_per_epoch,
            **{f"train_{k}": v for k, v in means.items()},
            "restored_from_step": e.restored_from_step,
            "lr": e.scheduler.get_last_lr()[0],
            **e.fast_path_metrics(),
            **{f"time_{k}": v for k, v in self.startup.items()},
        }
        if t.method != "labels_only":  # bits/dim of the unlabeled batches (mixture density, dequantized data)
            dim = math.prod(self.engine.spec["shape"])
            metrics["train_bpd"] = (means["unlabeled_nll"] + (dim * math.log(e.levels) if e.levels else 0.0)) / (
                dim * math.log(2)
            )
        if self.is_main:
            self.validate_into(metrics)
        last = e.step >= t.steps
        if self.evals % t.checkpoint_every == 0 or last:
            self.report_with_checkpoint(metrics)
        else:
            ray.train.report(metrics)

    def validate_into(self, metrics: dict[str, float]) -> None:
        val = validate(
            self.engine.model,
            self.val_x,
            self.val_y,
            levels=self.engine.levels,
            device=self.device,
            batch_size=self.cfg.eval.batch_size,
        )
        metrics.update({f"val_{k}": v for k, v in val.items()})
        metrics["score"] = selection_score(val["accuracy"], val["nll"])
        self.engine.best_score = max(self.engine.best_score, metrics["score"])
        self.last_val = val
        if self.tracker:
            self.tracker.log(metrics, self.engine.step)

    def report_with_checkpoint(self, metrics: dict[str, float]) -> None:
        rng = _gather(self.engine.rng_state(), self.world)  # every rank's generators, into rank 0's checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if self.is_main:
                self.engine.save(tmp, extra={"evals": self.evals}, rng=rng)
                if self.store is not None:  # local mode: Ray keeps only a reference, so persist it first
                    ckpt = self.store.checkpoint(self.store.save(tmp, self.engine.step, metrics.get("score", 0.0)))
                else:
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    def progress(self) -> None:
        step, total = self.engine.step, self.t.steps
        rate = (step - self.step_start) / max(time.time() - self.t_start, 1e-9)
        eta = (total - step) / max(rate, 1e-9)
        val = f" | val acc {self.last_val['accuracy']:.3f}" if self.last_val else ""
        print(
            f"[flowgmm] {self.loop.get('label', 'train'):<17} step {step:>6}/{total} {100 * step / total:3.0f}% | "
            f"{rate:6.1f} steps/s | ETA {int(eta) // 60}:{int(eta) % 60:02d}{val}",
            flush=True,
        )


def _torch_threads(n: int) -> None:
    """Intra-op threads of the process. More threads than free cores make every step wait on the slowest one (on a
    2-core machine 2 threads ran a digits step 3.5x slower than 1 thread when another process held a core)."""
    import torch

    torch.set_num_threads(n)


def _torch_seed(seed: int) -> None:
    """The model's initial weights: the same on every rank (the engine then seeds each rank's own generators)."""
    import torch

    torch.manual_seed(seed)


def _gather(obj: Any, world: int) -> list[Any]:
    """``obj`` of every rank, in rank order (a collective with several workers)."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _quiet_ray_train() -> None:
    """Ray Train V2 logs every report ("Reporting training result ...") from a logger named after its file."""
    from ray.train.v2._internal.execution import context

    for name in (context.__file__, context.__name__, "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": asked for


def _maybe_inject_failure(t, step: int, rank: int, marker: str | None) -> None:
    """Fault-tolerance testing: rank 1 (or 0 with one worker) dies hard, once, at a chosen global step.

    Ray Train commits a reported checkpoint when its controller next polls the workers (every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default); a worker that dies before that poll loses the report and
    the group restarts from the checkpoint before it. The hook waits out two poll intervals first, so it tests
    the documented guarantee: a restart resumes from the latest committed checkpoint."""
    if t.inject_failure_at_step < 0 or step != t.inject_failure_at_step or marker is None:
        return
    if rank != min(1, max(t.num_workers, 1) - 1) or os.path.exists(marker):
        return
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
    Path(marker).write_text(f"killed rank {rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


class _RankZeroTracker:
    """Logs metrics into the driver's MLflow run (the same run id across worker restarts)."""

    def __init__(self, info: dict[str, str] | None):
        self.client = None
        if info:
            from mlflow import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri=info["tracking_uri"]), info["run_id"]

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        self.client.log_batch(self.run_id, metrics=ms)
