"""One FlowGMM training step: the math shared by the Ray Train loop (`pipeline/train/loop.py`) and the benchmarks.

Ray-free on purpose, so `bench/` can time exactly the step that training runs on a machine without Ray.

    loss, parts = compute_loss(model, model, batch, cfg.train, step=0, image=True)
    apply_gradients(loss, model, optimizer, scheduler, cfg.train.grad_clip)
"""

from __future__ import annotations

import torch

from flowgmm import dequantize, objectives
from flowgmm.model import FlowGMM
from pipeline.config import TrainConfig
from pipeline.data.ingest import Step


def compute_loss(
    forward: torch.nn.Module, model: FlowGMM, batch: Step, t: TrainConfig, step: int, image: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The FlowGMM objective for one batch. ``forward`` is the (possibly DDP-wrapped or compiled) model, called
    once on the concatenated labeled + unlabeled batch, plus once without gradient on the second augmentation
    for FlowGMM-cons; ``model`` is the plain FlowGMM whose mixture defines the prior. Log-dets and the prior are
    computed in float32 even under bf16 autocast."""
    x_lab, x_unl = batch.x_lab, batch.x_unl
    if image:
        x_lab = dequantize(x_lab, noise="uniform")
        x_unl = None if x_unl is None else dequantize(x_unl, noise="uniform")
    n_lab = x_lab.shape[0]
    cons_w = 0.0
    if t.method == "flowgmm_cons":
        cons_w = objectives.linear_ramp(step, t.consistency_ramp_steps, t.consistency_weight)
    device_type = x_lab.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=t.bf16):
        targets = None
        if cons_w > 0 and batch.x_unl2 is not None:
            with torch.no_grad():
                x2 = dequantize(batch.x_unl2, noise="uniform") if image else batch.x_unl2
                z2, _ = forward(x2)
                targets = objectives.consistency_targets(model.mixture, z2.float())
        x = x_lab if t.method == "supervised" else torch.cat([x_lab, x_unl])
        z, logdet = forward(x)
    z, logdet = z.float(), logdet.float()
    if t.method == "supervised":
        return supervised_loss(model, z, logdet, batch.y_lab, t)
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


def supervised_loss(
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
