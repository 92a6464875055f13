"""FlowGMM: a normalizing flow ``z = f(x)`` with a class-conditional Gaussian mixture on ``z``.

``log p(x | y) = log N(f(x); mu_y, v_y I) + log|det df/dx|``, ``log p(x) = log sum_k pi_k p(x | k)`` and
``p(y | x)`` is the mixture posterior at ``z = f(x)`` (the flow's log-det cancels).  Prediction uses the
calibrated variances (``variance_scale``, 1 unless :meth:`FlowGMM.set_variance_scale` was called);
``log_prob`` uses the trained (unscaled) variances unless ``calibrated=True`` is passed.

Example:
    >>> import torch
    >>> from flowgmm import FlowGMM, vector_flow
    >>> model = FlowGMM(vector_flow(dim=2, num_couplings=2, hidden=8), num_classes=2)
    >>> x = torch.randn(5, 2)
    >>> model.log_prob(x).shape, model.log_prob(x, torch.zeros(5, dtype=torch.long)).shape
    (torch.Size([5]), torch.Size([5]))
    >>> torch.allclose(model.predict_proba(x).sum(1), torch.ones(5)), model.predict(x).shape
    (True, torch.Size([5]))
    >>> model.sample(4, y=1).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from flowgmm.bijections import Bijection
from flowgmm.mixture import GaussianMixture

__all__ = ["FlowGMM"]


class FlowGMM(nn.Module):
    """A flow with a latent Gaussian mixture, one component per class.

    Args:
        flow: a bijection mapping inputs to latents (``image_flow`` or ``vector_flow``).
        num_classes: ``K``.
        dim: latent dimension; inferred from ``flow.dim`` when the flow has one.
        means_scale, variance, per_class_variance, learn_means, learn_variance, learn_weights,
        class_counts, seed, means: passed to :class:`~flowgmm.mixture.GaussianMixture`.
    """

    def __init__(
        self,
        flow: Bijection,
        num_classes: int,
        dim: int | None = None,
        *,
        means_scale: float = 1.0,
        variance: float = 1.0,
        per_class_variance: bool = False,
        learn_means: bool = False,
        learn_variance: bool = False,
        learn_weights: bool = False,
        class_counts: Sequence[float] | np.ndarray | Tensor | None = None,
        seed: int = 0,
        means: Tensor | None = None,
    ):
        super().__init__()
        dim = dim if dim is not None else getattr(flow, "dim", None)
        if dim is None:
            raise ValueError("cannot infer dim from the flow: pass dim=")
        self.flow = flow
        self.num_classes, self.dim = num_classes, int(dim)
        self.mixture = GaussianMixture(
            num_classes,
            self.dim,
            means_scale=means_scale,
            variance=variance,
            per_class_variance=per_class_variance,
            learn_means=learn_means,
            learn_variance=learn_variance,
            learn_weights=learn_weights,
            class_counts=class_counts,
            seed=seed,
            means=means,
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z [B, D] flattened, logdet [B])``; the one call a DDP wrapper makes per step."""
        z, logdet = self.flow(x)
        return z.flatten(1), logdet

    def log_prob(self, x: Tensor, y: Tensor | None = None, calibrated: bool = False) -> Tensor:
        """``log p(x)`` (mixture) or ``log p(x | y)`` when ``y`` is given, ``[B]``."""
        z, logdet = self(x)
        return self.mixture.log_prob(z, y, calibrated) + logdet

    def predict_proba(self, x: Tensor, calibrated: bool = True) -> Tensor:
        """``p(y | x)``, ``[B, K]``, with the calibrated variance scale by default."""
        z, _ = self(x)
        return self.mixture.posterior(z, calibrated)

    def predict(self, x: Tensor) -> Tensor:
        """Most probable class, ``[B]`` (argmax of ``log pi_k + log N_k(f(x))``)."""
        return self.predict_proba(x).argmax(1)

    def set_variance_scale(self, scale: float) -> None:
        """Multiply every component variance by ``scale`` at prediction time (see ``flowgmm.calibration``)."""
        if not scale > 0:
            raise ValueError("scale must be positive")
        self.mixture.variance_scale.fill_(float(scale))

    @torch.no_grad()
    def sample(
        self, n: int, y: Tensor | int | None = None, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` data-space samples ``f^{-1}(z)``, ``z ~ N(mu_y, (temperature^2) v_y I)``.

        Classes are drawn from the mixture weights when ``y`` is None.  Call ``model.eval()`` first when the
        flow has BatchNorm.
        """
        z, _ = self.mixture.sample(n, y, temperature, generator)
        return self.flow.inverse(z)
