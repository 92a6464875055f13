"""Pushing a labeled split through the flow (``encode``), bits per dimension, and the validation that training runs
at every evaluation point (deterministic dequantization u = 0.5, eval mode, uncalibrated). The results stage
builds its evaluation on the same ``encode``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from flowgmm import dequantize
from flowgmm import metrics as M
from flowgmm.model import FlowGMM


@dataclass
class Encoded:
    """A split pushed through the flow once: everything the metrics need."""

    z: torch.Tensor  # [N, D] float32
    log_px: torch.Tensor  # [N] log p(x) under the (uncalibrated) mixture, data space
    y: np.ndarray


@torch.no_grad()
def encode(
    model: FlowGMM, x: np.ndarray, y: np.ndarray, *, levels: int | None, device: torch.device, batch_size: int = 512
) -> Encoded:
    """``levels``: the images' grey levels (uint8 rows, dequantized at u = 0.5), None for vectors."""
    zs, lps = [], []
    for i in range(0, len(x), batch_size):
        part = x[i : i + batch_size]  # a copy where the rows are read-only (a Ray task's arguments)
        xb = torch.as_tensor(part if part.flags.writeable else part.copy(), device=device)
        xb = dequantize(xb.float() / 255.0, noise="mid", levels=levels) if levels else xb.float()
        z, logdet = model(xb)
        z, logdet = z.float(), logdet.float()
        zs.append(z.cpu())
        lps.append((model.mixture.log_prob(z) + logdet).cpu())
    return Encoded(torch.cat(zs), torch.cat(lps), y)


def bits_per_dim(log_px: torch.Tensor, dim: int, levels: int | None) -> float:
    """Images: discrete bits/dim at the data's own ``levels`` (dequantized density minus D log levels). Vectors
    (``levels`` None): continuous nats -> bits."""
    nll = -log_px.double().mean().item()
    if levels:
        nll += dim * math.log(float(levels))
    return nll / (dim * math.log(2.0))


@torch.no_grad()
def validate(
    model: FlowGMM, x: np.ndarray, y: np.ndarray, *, levels: int | None, device: torch.device, batch_size: int = 512
) -> dict[str, float]:
    """Accuracy, NLL of p(y|x) and bits/dim on a labeled split: deterministic (u = 0.5), eval mode, uncalibrated."""
    was_training = model.training
    model.eval()
    enc = encode(model, x, y, levels=levels, device=device, batch_size=batch_size)
    probs = model.mixture.posterior(enc.z.to(device)).cpu().numpy()
    model.train(was_training)
    return {
        "accuracy": M.accuracy(probs, y),
        "nll": M.nll(probs, y),
        "bpd": bits_per_dim(enc.log_px, int(np.prod(x.shape[1:])), levels),
    }
