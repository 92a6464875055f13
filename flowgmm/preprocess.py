"""Image preprocessing: :func:`dequantize` (not invertible) and the :class:`Logit` bijection.

Images arrive in ``[0, 1]`` as ``x01 = k / 255`` for 8-bit values ``k``; a data set with ``L`` grey levels
(digits: 17, MNIST: 256) stores level ``q`` as ``k = round(255 q / (L - 1))``.  :func:`dequantize` recovers ``q``
and adds noise, ``x = (q + u) / L``, with ``u ~ U[0, 1)`` in training (``noise="uniform"``) and the fixed
``u = 0.5`` at evaluation (``noise="mid"``), so predictions are deterministic.  A density ``p(x)`` on
``[0, 1]^D`` then gives a discrete log-likelihood of about ``log p(x) - D log L``: the flow models the data's own
levels, not a comb of ``L`` spikes among 256.

:class:`Logit` maps ``[0, 1]`` to the real line: ``y = logit(alpha + (1 - 2 alpha) x)``, with the exact
log-det ``sum log(1 - 2 alpha) - log p - log(1 - p)``, ``p = alpha + (1 - 2 alpha) x``.  Its inverse undoes
the affine squeeze too (the reference code only applied a sigmoid).

Example:
    >>> import torch
    >>> from flowgmm.preprocess import Logit, dequantize
    >>> x01 = torch.tensor([[0.0, 1.0]])
    >>> dequantize(x01, noise="mid")           # (255 * x + 0.5) / 256
    tensor([[0.0020, 0.9980]])
    >>> dequantize(torch.tensor([[0.0, 0.5, 1.0]]), noise="mid", levels=17)   # (q + 0.5) / 17, q = 0, 8, 16
    tensor([[0.0294, 0.5000, 0.9706]])
    >>> y, logdet = Logit(alpha=0.05)(torch.tensor([[0.5, 0.5]]))
    >>> y, logdet
    (tensor([[0., 0.]]), tensor([2.5619]))
    >>> Logit(alpha=0.05).inverse(y)
    tensor([[0.5000, 0.5000]])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowgmm.bijections import Bijection, logdet_dtype

__all__ = ["Logit", "dequantize"]


def dequantize(
    x01: Tensor, noise: str = "uniform", generator: torch.Generator | None = None, levels: int = 256
) -> Tensor:
    """Return ``(q + u) / levels`` with ``q = round(x01 (levels - 1))`` and ``u ~ U[0, 1)`` (``"uniform"``) or
    ``u = 0.5`` (``"mid"``).

    ``x01`` holds 8-bit images scaled to ``[0, 1]`` (``k / 255``); the result lies in ``(0, 1)``. With the default
    256 levels this is ``(255 x01 + u) / 256``.
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    if noise == "uniform":
        u = torch.rand(x01.shape, generator=generator, dtype=x01.dtype, device=x01.device)
    elif noise == "mid":
        u = torch.full_like(x01, 0.5)
    else:
        raise ValueError(f"noise must be 'uniform' or 'mid', got {noise!r}")
    q = torch.round(x01 * (levels - 1))
    return (q + u) / float(levels)


class Logit(Bijection):
    """``y = logit(alpha + (1 - 2 alpha) x)`` for ``x`` in ``[0, 1]``, with its exact log-det."""

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError("alpha must be in (0, 0.5)")
        self.alpha = alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        # d y / d x = (1 - 2 alpha) / (p (1 - p)) and -log p - log(1 - p) = softplus(y) + softplus(-y)
        yd = y.to(logdet_dtype(x))
        per_dim = math.log(1.0 - 2.0 * self.alpha) + F.softplus(yd) + F.softplus(-yd)
        return y, per_dim.flatten(1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        return (torch.sigmoid(z) - self.alpha) / (1.0 - 2.0 * self.alpha)
