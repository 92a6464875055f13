"""The per-worker training loop (Ray Train, DDP) and the trainer that runs it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch

from flowgmm import metrics as M
from flowgmm.model import FlowGMM
from flowgmm.spec import build_model, save as save_model
from pipeline.config import Config
from pipeline.evaluate import bits_per_dim, encode
from pipeline.ingest import SSLStream, build_datasets, data_config, steps_per_epoch
from pipeline.prepare import Prepared
from pipeline.step import apply_gradients, compute_loss

STATE_FILE = "train_state.pt"
LOSS_PARTS = ("loss", "labeled_nll", "unlabeled_nll", "ce", "consistency")


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or infinite; the message names the step."""


@dataclass
class TrainState:
    """Everything that changes while training; saved in every checkpoint."""

    model: FlowGMM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    epoch: int = 0              # the next epoch to run
    best_score: float = -math.inf
    restored_from_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "best_score": self.best_score,
                "torch_rng": torch.get_rng_state()}

    def load(self, directory: Path, device: torch.device) -> None:
        weights = torch.load(directory / "weights.pt", map_location=device, weights_only=True)
        self.model.load_state_dict(weights)
        st = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.best_score = int(st["step"]), int(st["epoch"]), float(st["best_score"])
        torch.set_rng_state(st["torch_rng"])
        self.restored_from_step = self.step


def lr_lambda(cfg: Config, total_steps: int):
    warm, kind = max(cfg.train.warmup_steps, 0), cfg.train.lr_schedule

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    cfg = Config.from_dict(loop["config"])
    prepared: Prepared = loop["prepared"]
    spec: dict[str, Any] = loop["spec"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    is_main = rank == 0
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)
    image = spec["kind"] == "image"
    t = cfg.train

    # --- model, optimizer, schedule; restore on restart ------------------------------------------------------
    model = build_model(spec).to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "mixture" in name else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=t.lr,
                                  fused=device.type == "cuda")
    n_steps = steps_per_epoch(prepared, cfg.ingest, world)
    total_steps = n_steps * t.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    state = TrainState(model, optimizer, scheduler)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state.load(Path(d), device)
        if is_main:
            print(f"[flowgmm] restored checkpoint at epoch {state.epoch}, step {state.step}", flush=True)
    ddp = ray.train.torch.prepare_model(model)
    tracker = _RankZeroTracker(loop.get("mlflow")) if is_main else None
    val_x, val_y = loop["val"]
    stream = SSLStream(prepared, cfg.ingest, world_size=world, rank=rank, seed=t.seed, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    start_time, start_step = time.time(), state.step

    # --- epochs -----------------------------------------------------------------------------------------------
    while state.epoch < t.epochs:
        epoch = state.epoch
        ddp.train()
        sums = torch.zeros(len(LOSS_PARTS), device=device)
        steps_this_epoch = 0
        for batch in stream.epoch(epoch):
            _maybe_inject_failure(t, state.step, rank, loop.get("failure_marker"))
            loss, parts = compute_loss(ddp, model, batch, t, state.step, image)
            apply_gradients(loss, model, optimizer, scheduler, t.grad_clip)
            # non-finite guard without a host sync per step: remember the first bad step on the device
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, state.step), first_bad)
            lv = loss.detach()
            sums += torch.stack([_part(parts, lv, k) for k in LOSS_PARTS])
            state.step += 1
            steps_this_epoch += 1
            if state.step % t.log_every == 0:
                _check_finite(first_bad, loss, state.step)
                if is_main:
                    _progress(state, epoch, t.epochs, n_steps, total_steps, start_time, start_step,
                              float(loss.detach()))
        _check_finite(first_bad, sums[0], state.step)
        state.epoch = epoch + 1

        # --- validation, report, checkpoint (rank 0 writes) ---------------------------------------------------
        means = dict(zip(LOSS_PARTS, (sums / max(steps_this_epoch, 1)).tolist()))
        metrics: dict[str, float] = {"epoch": state.epoch, "step": state.step, "steps_in_epoch": steps_this_epoch,
                                     **{f"train_{k}": v for k, v in means.items()},
                                     "restored_from_step": state.restored_from_step,
                                     "lr": scheduler.get_last_lr()[0]}
        if t.method != "supervised":   # bits/dim of the unlabeled batches (mixture density, dequantized data)
            dim = int(np.prod(spec["shape"]))
            metrics["train_bpd"] = (means["unlabeled_nll"] + (dim * math.log(256) if image else 0.0)) / (
                dim * math.log(2))
        is_ckpt_epoch = state.epoch % t.checkpoint_every == 0 or state.epoch == t.epochs
        if is_main:
            val = validate(model, val_x, val_y, image=image, device=device, batch_size=cfg.eval.batch_size)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["score"] = val["accuracy"] - 1e-3 * val["nll"]
            state.best_score = max(state.best_score, metrics["score"])
            if tracker:
                tracker.log_epoch(metrics, state.step)
            print(f"[flowgmm] epoch {state.epoch}/{t.epochs} step {state.step} loss {means['loss']:.4g} "
                  f"val_acc {val['accuracy']:.4f} val_nll {val['nll']:.4f} val_bpd {val['bpd']:.4f}", flush=True)
        if is_ckpt_epoch:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if is_main:
                    save_model(model, spec, tmp)
                    torch.save(state.state_dict(), os.path.join(tmp, STATE_FILE))
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt)
        else:
            ray.train.report(metrics)


@torch.no_grad()
def validate(model: FlowGMM, x: np.ndarray, y: np.ndarray, *, image: bool, device: torch.device,
             batch_size: int = 512) -> dict[str, float]:
    """Accuracy, NLL of p(y|x) and bits/dim on a labeled split: deterministic (u = 0.5), eval mode, uncalibrated."""
    was_training = model.training
    model.eval()
    enc = encode(model, x, y, image=image, device=device, batch_size=batch_size)
    probs = model.mixture.posterior(enc.z.to(device)).cpu().numpy()
    model.train(was_training)
    return {"accuracy": M.accuracy(probs, y), "nll": M.nll(probs, y),
            "bpd": bits_per_dim(enc.log_px, int(np.prod(x.shape[1:])), image)}


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
            f"enable gradient clipping (train.grad_clip) or disable train.bf16")


def _progress(state: TrainState, epoch: int, epochs: int, n_steps: int, total: int, t0: float, s0: int,
              loss: float) -> None:
    done = state.step - s0
    rate = done / max(time.time() - t0, 1e-9)
    eta = (total - state.step) / max(rate, 1e-9)
    print(f"[flowgmm] epoch {epoch + 1}/{epochs} step {state.step}/{total} loss {loss:.4g} "
          f"{rate:.2f} steps/s ETA {eta / 60:.1f} min", flush=True)


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
        ms = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))
              and math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=ms)


# --------------------------------------------------------------------------------------------------------------
# The trainer (driver side)
# --------------------------------------------------------------------------------------------------------------

MATERIALIZE_BYTES = 2 * 1024**3


def training_datasets(prepared: Prepared, cfg: Config) -> dict[str, Any]:
    """Ray Datasets for training. The unlabeled stream is materialized in the object store when its shards are
    small (under 2 GiB on disk): re-reading Parquet every epoch costs seconds of fixed overhead per epoch on a
    small cluster, while large data sets keep streaming."""
    ds = build_datasets(prepared, seed=cfg.train.seed, with_val=False, preserve_order=cfg.ingest.preserve_order,
                        spread_reads=cfg.ingest.spread_reads)
    size = sum(f.stat().st_size for f in prepared.split_dir("unlabeled").glob("*.parquet"))
    if size < MATERIALIZE_BYTES:
        ds["unlabeled"] = ds["unlabeled"].materialize()
    return ds


def make_trainer(cfg: Config, prepared: Prepared, spec: dict[str, Any], *, run_name: str, storage_path: str,
                 mlflow_info: dict[str, str] | None, val: tuple[np.ndarray, np.ndarray],
                 callbacks: list | None = None) -> ray.train.torch.TorchTrainer:
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    loop = {"config": cfg.to_dict(), "prepared": prepared, "spec": spec, "mlflow": mlflow_info, "val": val,
            "failure_marker": os.path.join(storage_path, run_name, ".injected_failure")}
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=t.placement_strategy),
        datasets=training_datasets(prepared, cfg),
        dataset_config=data_config(cfg.ingest),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="score",
                                                         checkpoint_score_order="max"),
            callbacks=callbacks or []),
    )
