"""The per-worker training loop (Ray Train, DDP).

Reads top to bottom: build the model, restore the latest checkpoint if this worker group is a restart, then for
every epoch stream labeled + unlabeled batches from Ray Data, take FlowGMM steps, evaluate on validation (rank 0),
and report metrics with a checkpoint. One flag, ``is_main`` (rank 0), gates every side effect: checkpoints,
MLflow and progress lines.

Launch (through the pipeline, which prepares data and sets up MLflow first):

    python pipeline/run.py --config digits
    ray job submit --working-dir . -- python pipeline/run.py --config mnist
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from flowgmm.spec import build_model
from flowgmm.spec import save as save_model
from pipeline.config import Config, TrainConfig
from pipeline.data.ingest import SSLStream, steps_per_epoch
from pipeline.data.manifest import Prepared
from pipeline.train.state import STATE_FILE, NonFiniteLossError, TrainState, lr_lambda
from pipeline.train.step import apply_gradients, compute_loss
from pipeline.train.validate import validate

LOSS_PARTS = ("loss", "labeled_nll", "unlabeled_nll", "ce", "consistency")


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    """The Ray Train function. ``loop``: config (dict), prepared, spec (the model spec), val (x, y), mlflow
    (tracking URI + run id, or None), failure_marker (fault-injection tests)."""
    w = Worker(loop)
    w.restore()
    while w.state.epoch < w.t.epochs:
        sums, steps = w.train_epoch()
        w.end_epoch(sums, steps)


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the coupling nets' weight matrices only (not on biases, gains or the mixture)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "mixture" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        fused=device.type == "cuda",
    )


class Worker:
    """One training worker: its configuration, model, optimizer, data stream and progress."""

    def __init__(self, loop: dict[str, Any]):
        self.loop = loop
        self.cfg = cfg = Config.from_dict(loop["config"])
        self.t = cfg.train
        self.prepared: Prepared = loop["prepared"]
        self.spec: dict[str, Any] = loop["spec"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.is_main = self.rank == 0
        self.device = ray.train.torch.get_device()
        torch.manual_seed(self.t.seed)
        self.image = self.spec["kind"] == "image"
        self.model = build_model(self.spec).to(self.device)
        self.optimizer = build_optimizer(self.model, self.t, self.device)
        self.n_steps = steps_per_epoch(self.prepared, cfg.ingest, self.world)
        self.total_steps = self.n_steps * self.t.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.state = TrainState(self.model, self.optimizer, scheduler)
        self.val_x, self.val_y = loop["val"]
        self.stream = SSLStream(
            self.prepared, cfg.ingest, world_size=self.world, rank=self.rank, seed=self.t.seed, device=self.device
        )
        self.first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.tracker = _RankZeroTracker(loop.get("mlflow")) if self.is_main else None

    def restore(self) -> None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                self.state.load(Path(d), self.device)
            if self.is_main:
                print(f"[flowgmm] restored checkpoint at epoch {self.state.epoch}, step {self.state.step}", flush=True)
        self.ddp = ray.train.torch.prepare_model(self.model)
        self.start_time, self.start_step = time.time(), self.state.step

    def train_epoch(self) -> tuple[torch.Tensor, int]:
        state, t = self.state, self.t
        epoch = state.epoch
        self.ddp.train()
        sums = torch.zeros(len(LOSS_PARTS), device=self.device)
        steps = 0
        for batch in self.stream.epoch(epoch):
            _maybe_inject_failure(t, state.step, self.rank, self.loop.get("failure_marker"))
            loss, parts = compute_loss(self.ddp, self.model, batch, t, state.step, self.image)
            apply_gradients(loss, self.model, self.optimizer, state.scheduler, t.grad_clip)
            # non-finite guard without a host sync per step: remember the first bad step on the device
            bad = ~torch.isfinite(loss.detach())
            self.first_bad = torch.where(
                bad & (self.first_bad < 0), torch.full_like(self.first_bad, state.step), self.first_bad
            )
            lv = loss.detach()
            sums += torch.stack([_part(parts, lv, k) for k in LOSS_PARTS])
            state.step += 1
            steps += 1
            if state.step % t.log_every == 0:
                _check_finite(self.first_bad, loss, state.step)
                if self.is_main:
                    self.progress(epoch, float(loss.detach()))
        _check_finite(self.first_bad, sums[0], state.step)
        state.epoch = epoch + 1
        return sums, steps

    def end_epoch(self, sums: torch.Tensor, steps: int) -> None:
        """Validation, report and checkpoint (rank 0 writes)."""
        state, t = self.state, self.t
        means = dict(zip(LOSS_PARTS, (sums / max(steps, 1)).tolist()))
        metrics: dict[str, float] = {
            "epoch": state.epoch,
            "step": state.step,
            "steps_in_epoch": steps,
            **{f"train_{k}": v for k, v in means.items()},
            "restored_from_step": state.restored_from_step,
            "lr": state.scheduler.get_last_lr()[0],
        }
        if t.method != "supervised":  # bits/dim of the unlabeled batches (mixture density, dequantized data)
            dim = int(np.prod(self.spec["shape"]))
            metrics["train_bpd"] = (means["unlabeled_nll"] + (dim * math.log(256) if self.image else 0.0)) / (
                dim * math.log(2)
            )
        if self.is_main:
            self.validate_into(metrics, means["loss"])
        if state.epoch % t.checkpoint_every == 0 or state.epoch == t.epochs:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if self.is_main:
                    save_model(self.model, self.spec, tmp)
                    torch.save(state.state_dict(), os.path.join(tmp, STATE_FILE))
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
        else:
            ray.train.report(metrics)

    def validate_into(self, metrics: dict[str, float], loss: float) -> None:
        state = self.state
        val = validate(
            self.model,
            self.val_x,
            self.val_y,
            image=self.image,
            device=self.device,
            batch_size=self.cfg.eval.batch_size,
        )
        metrics.update({f"val_{k}": v for k, v in val.items()})
        metrics["score"] = val["accuracy"] - 1e-3 * val["nll"]
        state.best_score = max(state.best_score, metrics["score"])
        if self.tracker:
            self.tracker.log_epoch(metrics, state.step)
        print(
            f"[flowgmm] epoch {state.epoch}/{self.t.epochs} step {state.step} loss {loss:.4g} "
            f"val_acc {val['accuracy']:.4f} val_nll {val['nll']:.4f} val_bpd {val['bpd']:.4f}",
            flush=True,
        )

    def progress(self, epoch: int, loss: float) -> None:
        done = self.state.step - self.start_step
        rate = done / max(time.time() - self.start_time, 1e-9)
        eta = (self.total_steps - self.state.step) / max(rate, 1e-9)
        print(
            f"[flowgmm] epoch {epoch + 1}/{self.t.epochs} step {self.state.step}/{self.total_steps} "
            f"loss {loss:.4g} {rate:.2f} steps/s ETA {eta / 60:.1f} min",
            flush=True,
        )


def _part(parts: dict[str, torch.Tensor], like: torch.Tensor, *names: str) -> torch.Tensor:
    for n in names:
        if n in parts:
            return torch.as_tensor(parts[n], dtype=torch.float32, device=like.device).reshape(())
    return like.new_zeros(())


def _check_finite(first_bad: torch.Tensor, loss: torch.Tensor, step: int) -> None:
    bad_step = int(first_bad)
    if bad_step >= 0:
        raise NonFiniteLossError(
            f"non-finite training loss at step {bad_step} (checked at step {step}); lower train.lr, "
            f"enable gradient clipping (train.grad_clip) or disable train.bf16"
        )


def _maybe_inject_failure(t, step: int, rank: int, marker: str | None) -> None:
    """Fault-tolerance testing: rank 1 (or 0 with one worker) dies hard, once, at a chosen global step.

    Ray Train commits a reported checkpoint when its controller next polls the workers (every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default); a worker that dies before that poll loses the report and
    the group restarts from the checkpoint before it. The hook waits out two poll intervals first, so it tests
    the documented guarantee: a restart resumes from the latest committed checkpoint."""
    if t.inject_failure_at_step < 0 or step != t.inject_failure_at_step or marker is None:
        return
    if rank != min(1, t.num_workers - 1) or os.path.exists(marker):
        return
    time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)) + 1)
    Path(marker).write_text(f"killed rank {rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


class _RankZeroTracker:
    """Logs per-epoch metrics into the driver's MLflow run (the same run id across worker restarts)."""

    def __init__(self, info: dict[str, str] | None):
        self.client = None
        if info:
            from mlflow import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri=info["tracking_uri"]), info["run_id"]

    def log_epoch(self, metrics: dict[str, float], step: int) -> None:
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
