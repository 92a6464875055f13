"""The training loop every Ray Train worker runs (DDP with several workers; in the driver process with none).

Read :func:`train_loop_per_worker` top to bottom: set the worker up (its rank, the model, optimizer and schedule in
an :class:`~pipeline.train.engine.Engine`, its share of the batches), restore the latest checkpoint when this is a
restarted worker group or a resumed run, then take FlowGMM steps (:func:`pipeline.train.step.compute_loss` inside
``engine.train_step``). Every ``log_every`` steps, and at every evaluation point, the loss is checked finite on all
ranks and rank 0 prints a progress line (at most one per tenth of the steps); every ``eval_every`` steps (and at
the last) rank 0 validates, all ranks decide together whether to stop on validation
(:class:`~pipeline.train.state.ValidationStop`), and every rank reports (with a checkpoint every
``checkpoint_every`` reports, at a stop and at the last step).

A non-finite loss ends the loop with ``{"nonfinite_step": N, "checked_at": M}`` as its return value: a deterministic
failure, which the driver turns into an error instead of letting Ray Train retry it. One flag, ``is_main`` (rank 0),
gates every side effect: checkpoints, MLflow and the console. Where training in the driver differs from training on
workers (threads, where checkpoints are kept) is :class:`~pipeline.train.state.Checkpoints`.

    python pipeline/run.py --config digits             # through the job, which prepares data and MLflow first
"""

from __future__ import annotations

import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray.train
import ray.train.torch

from flowgmm.metrics import selection_score
from pipeline.config import Config, TrainConfig
from pipeline.data.manifest import Prepared
from pipeline.data.stream import SSLStream
from pipeline.train.engine import Engine
from pipeline.train.state import Checkpoints, ValidationStop
from pipeline.train.validate import validate


@dataclass
class LoopInputs:
    """What the driver hands every worker (``TorchTrainer(train_loop_config=...)``)."""

    config: dict[str, Any]  # Config.to_dict()
    prepared: Prepared
    spec: dict[str, Any]  # the model spec (flowgmm.spec.build_model)
    val: tuple[np.ndarray, np.ndarray]  # the validation split (rows, labels)
    checkpoints: str  # the run's checkpoint root (used in the driver; Ray Train keeps its own on workers)
    label: str = "train"  # the model's name on the console
    progress: bool = True  # its progress lines (off for a model trained beside another, in a Ray task)
    mlflow: dict[str, str] | None = None  # tracking URI + run id of the driver's MLflow run
    resume: bool = False
    verbose: bool = False
    compile_cache: str | None = None
    from_files: bool = False  # rows straight from the prepared files, not Ray Data (pipeline.train.trainer.reads_files)
    failure_marker: str | None = None  # fault-injection tests
    cores: Callable[[], int] | None = None  # in the driver: the cores it may use now, read every step (None: its own)
    fit_started: float = field(default_factory=time.time)


def train_loop_per_worker(inp: LoopInputs) -> dict[str, int] | None:
    """The Ray Train function: ``train.steps`` FlowGMM steps at most; None, or the first non-finite step."""
    t_enter = time.time()
    cfg = Config.from_dict(inp.config)
    t = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    is_main = rank == 0
    ckpts = Checkpoints(inp.checkpoints, local=t.num_workers == 0, resume=inp.resume)
    if not inp.verbose:
        _quiet_ray_train()
    device = ray.train.torch.get_device()
    _torch_setup(t, local=ckpts.local)
    if inp.cores is not None and ckpts.local:
        use_cores(inp.cores(), t)  # from the start: the model's build and restore too
    engine = Engine(inp.spec, cfg, device, compile_cache=inp.compile_cache, rank=rank, world=world)
    run = _Run(inp, cfg, engine, ckpts, is_main)
    run.restore()
    if ckpts.local and 0 < engine.step < t.steps and run.stopper.stopped(engine.step):  # it had stopped: done
        ckpts.report({"step": engine.step, "stopped_on_validation": 1.0}, None)
        return None
    if world > 1:
        engine.distribute(ray.train.torch.prepare_model)
    stream = SSLStream(
        inp.prepared,
        cfg.ingest,
        world_size=world,
        rank=rank,
        seed=t.seed,
        device=device,
        unlabeled=t.method != "labels_only",
        second_view=t.method == "flowgmm_cons",
        arrays=_file_arrays(inp.prepared, t.method != "labels_only") if inp.from_files else None,
    )
    run.startup["trainer_start_s"] = t_enter - inp.fit_started
    t_pull = time.time()
    for batch in stream.batches(start=engine.step):
        run.startup.setdefault("data_pull_s", time.time() - t_pull)  # the first batch: rows onto the device
        _maybe_inject_failure(t, engine.step, rank, inp.failure_marker)
        if inp.cores is not None and ckpts.local:
            use_cores(inp.cores(), t)
        engine.train_step(batch)
        step = engine.step
        at_eval, at_log = step % t.eval_every == 0 or step >= t.steps, step % t.log_every == 0
        if at_eval or at_log:
            bad = engine.first_bad_step()  # the same steps on every rank: a collective, the same answer
            if bad >= 0:
                return {"nonfinite_step": bad, "checked_at": step}
        stop = run.evaluate_and_report(stream.steps_per_epoch) if at_eval else False
        if is_main and inp.progress and (stop or step >= t.steps or (at_log and run.progress_due())):
            run.progress(stopped=stop)
        if stop or step >= t.steps:
            break
    return None


class _Run:
    """One worker's run: its engine, checkpoints, validation, stopping rule, MLflow and console line."""

    def __init__(self, inp: LoopInputs, cfg: Config, engine: Engine, ckpts: Checkpoints, is_main: bool):
        self.inp, self.cfg, self.t, self.engine, self.ckpts, self.is_main = inp, cfg, cfg.train, engine, ckpts, is_main
        self.world = engine.world
        self.stopper = ValidationStop(self.t.patience, self.t.min_steps, self.t.stop_smoothing)
        self.tracker = _RankZeroTracker(inp.mlflow) if is_main else None
        self.evals = 0
        self.printed_tenth = 0  # the last tenth of the steps with a progress line (the first line at 10%)
        self.last_val: dict[str, float] = {}
        self.startup: dict[str, float] = {}

    def restore(self) -> None:
        checkpoint = self.ckpts.restore()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                st = self.engine.load(d)
            self.evals = int(st.get("evals", 0))
            self.stopper.load(st.get("stopper"))
            if self.is_main and self.inp.progress:
                print(f"[flowgmm] {self.inp.label}: resumed from step {self.engine.step}", flush=True)
        self.t_start, self.step_start = time.time(), self.engine.step

    def evaluate_and_report(self, steps_per_epoch: int) -> bool:
        """Validation (rank 0), the decision to stop (taken on rank 0, the same on every rank), and the report every
        worker makes, with a checkpoint every ``checkpoint_every`` reports, at a stop and at the last step."""
        e, t = self.engine, self.t
        self.evals += 1
        metrics = self.train_metrics(steps_per_epoch)
        stop = False
        if self.is_main:
            metrics.update(self.validate())
            stop = self.stopper.update(e.step, metrics["score"]) and e.step < t.steps
        stop = _agree(stop, self.world)
        metrics["stopped_on_validation"] = float(stop)
        if self.tracker:
            self.tracker.log(metrics, e.step)
        if self.evals % t.checkpoint_every == 0 or stop or e.step >= t.steps:
            self.report_with_checkpoint(metrics)
        else:
            self.ckpts.report(metrics, None)
        return stop

    def train_metrics(self, steps_per_epoch: int) -> dict[str, float]:
        e = self.engine
        means = e.pop_means()
        metrics: dict[str, float] = {
            "step": e.step,
            "epoch": e.step / steps_per_epoch,
            **{f"train_{k}": v for k, v in means.items()},
            "restored_from_step": e.restored_from_step,
            "lr": e.scheduler.get_last_lr()[0],
            **e.fast_path_metrics(),
            **{f"time_{k}": v for k, v in self.startup.items()},
        }
        if self.t.method != "labels_only":  # bits/dim of the unlabeled batches (mixture density, dequantized data)
            dim = math.prod(e.spec["shape"])
            nats = means["unlabeled_nll"] + (dim * math.log(e.levels) if e.levels else 0.0)
            metrics["train_bpd"] = nats / (dim * math.log(2))
        return metrics

    def validate(self) -> dict[str, float]:
        x, y = self.inp.val
        e = self.engine
        val = validate(e.model, x, y, levels=e.levels, device=e.device, batch_size=self.cfg.eval.batch_size)
        self.last_val = val
        score = selection_score(val["accuracy"], val["nll"])
        e.best_score = max(e.best_score, score)
        return {**{f"val_{k}": v for k, v in val.items()}, "score": score}

    def report_with_checkpoint(self, metrics: dict[str, float]) -> None:
        rng = _gather(self.engine.rng_state(), self.world)  # every rank's generators, into rank 0's checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            if self.is_main:
                self.engine.save(tmp, extra={"evals": self.evals, "stopper": self.stopper.state()}, rng=rng)
            self.ckpts.report(metrics, tmp if self.is_main else None)

    def progress_due(self) -> bool:
        """At most one progress line per tenth of the steps (a 2,000-step table job: 10 lines, not 20)."""
        tenth = 10 * self.engine.step // max(self.t.steps, 1)
        due = tenth > self.printed_tenth
        self.printed_tenth = max(tenth, self.printed_tenth)
        return due

    def progress(self, stopped: bool = False) -> None:
        step, total = self.engine.step, self.t.steps
        rate = (step - self.step_start) / max(time.time() - self.t_start, 1e-9)
        eta = (total - step) / max(rate, 1e-9)
        val = f" | val acc {self.last_val['accuracy']:.3f}" if self.last_val else ""
        end = " | stopped: validation flat" if stopped else f" | ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        print(
            f"[flowgmm] {self.inp.label:<17} step {step:>6}/{total} {100 * step / total:3.0f}% | "
            f"{rate:6.1f} steps/s{end}{val}",
            flush=True,
        )


def _torch_setup(t: TrainConfig, *, local: bool) -> None:
    """Threads and the initial weights. In the driver, intra-op threads as Ray gives a worker its CPUs (whole ones,
    at least one: more threads than free cores make every step wait on the slowest one; on a 2-core machine 2
    threads ran a digits step 3.5x slower than 1 when another process held a core). Ray Train workers get their
    threads from Ray. The seed makes the initial weights the same on every rank (the engine then seeds each rank's
    own generators)."""
    import torch

    if local:
        torch.set_num_threads(driver_threads(t))
    torch.manual_seed(t.seed)


def use_cores(cores: int, t: TrainConfig) -> None:
    """Intra-op threads of a run in the driver that shares its machine: the ``cores`` it may use now, at most its
    own (:func:`driver_threads`), at least one. A process whose share grows as another's work ends (the labels-only
    flow beside the main model's evaluation, ``pipeline.results.baselines.CoreShare``) calls it every step."""
    import torch

    want = max(1, min(int(cores), driver_threads(t)))
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


def driver_threads(t: TrainConfig) -> int:
    """Intra-op threads of a model trained in the driver (``train.num_workers = 0``): ``train.cpus_per_worker``
    whole cores, at least one.

    >>> from pipeline.config import TrainConfig
    >>> driver_threads(TrainConfig(cpus_per_worker=0.5)), driver_threads(TrainConfig(cpus_per_worker=2))
    (1, 2)
    """
    return max(1, int(t.cpus_per_worker))


def _file_arrays(prepared: Prepared, unlabeled: bool) -> dict[str, np.ndarray]:
    """The labeled and (when trained on) unlabeled rows, read from the prepared Parquet files."""
    from pipeline.data.shards import load_split

    xl, yl = load_split(prepared, "labeled")
    xu = load_split(prepared, "unlabeled")[0] if unlabeled else xl[:0]
    return {"x_lab": xl, "y_lab": yl, "x_unl": xu}


def _agree(flag: bool, world: int) -> bool:
    """Rank 0's decision on every rank (a collective with several workers)."""
    if world <= 1:
        return flag
    return bool(_gather(flag, world)[0])


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


def _maybe_inject_failure(t: TrainConfig, step: int, rank: int, marker: str | None) -> None:
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
