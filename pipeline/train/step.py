"""One FlowGMM training step: the math shared by the Ray Train loop (`pipeline/train/loop.py`) and the benchmarks.

Ray-free on purpose, so `bench/` can time exactly the step that training runs on a machine without Ray.

    loss, parts = compute_loss(model, model, batch, cfg.train, step=0, levels=256)
    apply_gradients(loss, model, optimizer, scheduler, cfg.train.grad_clip)
"""

from __future__ import annotations

import torch

from flowgmm import dequantize, objectives
from flowgmm.model import FlowGMM
from flowgmm.nets import frozen_batch_stats
from pipeline.config import TrainConfig
from pipeline.data.ingest import Step


def compute_loss(
    forward: torch.nn.Module, model: FlowGMM, batch: Step, t: TrainConfig, step: int, levels: int | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The FlowGMM objective for one batch. ``forward`` is the (possibly DDP-wrapped or compiled) model, called
    once on the concatenated labeled + unlabeled batch, plus once without gradient on the second augmentation
    for FlowGMM-cons; ``model`` is the plain FlowGMM whose mixture defines the prior. ``levels``: the images' grey
    levels (dequantized at that resolution), None for vectors. Log-dets and the prior are computed in float32 even
    under bf16 autocast."""
    x_lab, x_unl = _dequantized(batch.x_lab, levels), _dequantized(batch.x_unl, levels)
    n_lab = x_lab.shape[0]
    cons_w = consistency_weight(t, step)
    with torch.autocast(device_type=x_lab.device.type, dtype=torch.bfloat16, enabled=t.bf16):
        targets = None
        if cons_w > 0 and batch.x_unl2 is not None:
            targets = _second_view_targets(forward, model, batch, t, levels)
        x = x_lab if t.method == "labels_only" else torch.cat([x_lab, x_unl])
        z, logdet = forward(x)
    z, logdet = z.float(), logdet.float()
    if t.method == "labels_only":
        return labels_only_loss(model, z, logdet, batch.y_lab, t)
    return objectives.semi_supervised_loss(
        model.mixture,
        z[:n_lab],
        logdet[:n_lab],
        batch.y_lab,
        z[n_lab:],
        logdet[n_lab:],
        form=t.loss_form,
        label_weight=t.label_weight,
        unlabeled_weight=t.unlabeled_weight,
        consistency_weight=cons_w,
        cons_targets=targets,
    )


def consistency_weight(t: TrainConfig, step: int) -> float:
    """FlowGMM-cons: 0 before ``consistency_start_step``, then a linear ramp to ``consistency_weight``."""
    if t.method != "flowgmm_cons" or step < t.consistency_start_step:
        return 0.0
    return objectives.linear_ramp(step - t.consistency_start_step, t.consistency_ramp_steps, t.consistency_weight)


def _dequantized(x: torch.Tensor | None, levels: int | None) -> torch.Tensor | None:
    return x if x is None or levels is None else dequantize(x, noise="uniform", levels=levels)


@torch.no_grad()
def _second_view_targets(
    forward: torch.nn.Module, model: FlowGMM, batch: Step, t: TrainConfig, levels: int | None
) -> torch.Tensor:
    """Hard targets from the second augmentation (all rows: labeled then unlabeled, or the unlabeled rows only);
    -1 where the posterior's max is below ``consistency_threshold``. BatchNorm statistics are left untouched."""
    views = (
        [batch.x_unl2] if t.consistency_rows == "unlabeled" or batch.x_lab2 is None else [batch.x_lab2, batch.x_unl2]
    )
    x2 = _dequantized(torch.cat(views), levels)
    with frozen_batch_stats(model):
        z2, _ = forward(x2)
    return objectives.consistency_targets(model.mixture, z2.float(), t.consistency_threshold)


def labels_only_loss(
    model: FlowGMM, z: torch.Tensor, logdet: torch.Tensor, y: torch.Tensor, t: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same flow trained on the labeled rows only (the baseline)."""
    if t.loss_form == "ce":
        ce = objectives.cross_entropy(model.mixture, z, y)
        loss = t.label_weight * ce + objectives.unlabeled_nll(model.mixture, z, logdet)
        return loss, {"ce": ce.detach(), "loss": loss.detach()}
    nll = objectives.labeled_nll(model.mixture, z, logdet, y)
    return nll, {"labeled_nll": nll.detach(), "loss": nll.detach()}


def apply_gradients(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    grad_clip: float,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
