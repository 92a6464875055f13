"""The latent Gaussian mixture: one isotropic Gaussian per class, densities in closed form.

``p(z) = sum_k pi_k N(z; mu_k, v_k I)`` with ``log N(z; mu, v I) = -D/2 log(2 pi v) - |z - mu|^2 / (2 v)``
(no ``D x D`` covariance is ever built).  Means are drawn once from ``seed``: each coordinate ``N(0, r^2)``
with ``r = means_scale``; for two classes the antipodal pair ``mu_1 = -mu_0`` with ``|mu_0| = r sqrt(D)``
(the typical norm of such a draw), so the separation ``2 r sqrt(D)`` does not depend on the seed.
Variances are one shared scalar or one per class; weights are uniform or proportional to class counts.

Calibration: the buffer ``variance_scale`` (default 1, never learned) multiplies every variance when a
method is called with ``calibrated=True``.  Training always uses ``calibrated=False`` (the default of every
method here); :meth:`flowgmm.FlowGMM.predict_proba` uses ``calibrated=True``.

Log-densities are computed in float32 (float64 for float64 inputs) with autocast disabled.

Example:
    >>> import torch
    >>> from flowgmm.mixture import GaussianMixture
    >>> gmm = GaussianMixture(num_classes=2, dim=2, means=torch.tensor([[-2.0, 0.0], [2.0, 0.0]]))
    >>> z = torch.tensor([[-2.0, 0.0], [0.0, 0.0]])
    >>> gmm.posterior(z).round(decimals=3)
    tensor([[1.0000, 0.0000],
            [0.5000, 0.5000]])
    >>> gmm.log_prob(z, torch.tensor([0, 0]))      # log N_0(z); -log(2 pi) = -1.8379
    tensor([-1.8379, -3.8379])
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GaussianMixture", "init_means"]


def init_means(num_classes: int, dim: int, scale: float = 1.0, seed: int = 0) -> Tensor:
    """``[K, D]`` means with i.i.d. ``N(0, scale^2)`` coordinates; the antipodal pair when ``K = 2``."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=gen) * scale
    if num_classes == 2:
        mu = means[0] / means[0].norm() * scale * math.sqrt(dim)
        means = torch.stack([mu, -mu])
    return means


def _float(z: Tensor) -> Tensor:
    return z if z.dtype == torch.float64 else z.float()


class GaussianMixture(nn.Module):
    """Isotropic Gaussian mixture over ``dim``-dimensional latents, one component per class.

    Args:
        num_classes, dim: ``K`` and ``D``.
        means_scale: ``r`` of the mean initialisation (ignored when ``means`` is given).
        variance: initial variance (shared, or the same start value for every class).
        per_class_variance: one variance per class instead of one shared scalar.
        learn_means, learn_variance, learn_weights: make those parameters trainable.
        class_counts: labeled counts per class; weights ``pi_k`` proportional to them (uniform if None).
        seed: seed of the mean initialisation.
        means: explicit ``[K, D]`` means (overrides the random initialisation).
    """

    variance_scale: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
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
        self.num_classes, self.dim = num_classes, dim
        mu = init_means(num_classes, dim, means_scale, seed) if means is None else torch.as_tensor(means).float()
        if mu.shape != (num_classes, dim):
            raise ValueError(f"means must have shape {(num_classes, dim)}, got {tuple(mu.shape)}")
        log_var = torch.full((num_classes if per_class_variance else 1,), math.log(variance))
        if class_counts is None:
            log_w = torch.full((num_classes,), -math.log(num_classes))
        else:
            counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)
            if counts.shape != (num_classes,) or bool((counts <= 0).any()):
                raise ValueError("class_counts must hold K positive counts")
            log_w = torch.log(counts / counts.sum())
        self._register("means", mu, learn_means)
        self._register("log_variance", log_var, learn_variance)
        self._register("weight_logits", log_w, learn_weights)
        self.register_buffer("variance_scale", torch.ones(()))

    def _register(self, name: str, value: Tensor, learn: bool) -> None:
        if learn:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    # ----------------------------------------------------------------------------------------- parameters
    @property
    def log_weights(self) -> Tensor:
        """``log pi_k``, ``[K]``."""
        return F.log_softmax(self.weight_logits, dim=0)

    def variances(self, calibrated: bool = False) -> Tensor:
        """Component variances ``[K]`` (times ``variance_scale`` if ``calibrated``)."""
        var = self.log_variance.exp().expand(self.num_classes)
        return var * self.variance_scale if calibrated else var

    # ------------------------------------------------------------------------------------------ densities
    def squared_distances(self, z: Tensor) -> Tensor:
        """``|z - mu_k|^2``, ``[B, K]``."""
        with torch.autocast(z.device.type, enabled=False):
            z = _float(z)
            mu = self.means.to(z.dtype)
            sq = z.square().sum(1, keepdim=True) - 2.0 * z @ mu.T + mu.square().sum(1)
            return sq.clamp_min(0.0)

    def component_log_prob(
        self, z: Tensor, calibrated: bool = False, *, variance_scale: Tensor | float | None = None
    ) -> Tensor:
        """``log N(z; mu_k, v_k I)`` for every class, ``[B, K]``.

        ``variance_scale`` overrides the stored scale (used by calibration); otherwise the stored
        ``variance_scale`` applies only if ``calibrated``.
        """
        return self._component_from_sq(self.squared_distances(z), calibrated, variance_scale)

    def _component_from_sq(self, sq: Tensor, calibrated: bool, variance_scale: Tensor | float | None) -> Tensor:
        var = self.variances(calibrated and variance_scale is None).to(sq.dtype)
        if variance_scale is not None:
            var = var * variance_scale
        return -0.5 * self.dim * torch.log(2 * math.pi * var) - 0.5 * sq / var

    def class_logits(self, z: Tensor, calibrated: bool = False) -> Tensor:
        """``log pi_k + log N_k(z)``, ``[B, K]``: the joint ``log p(z, y=k)``."""
        comp = self.component_log_prob(z, calibrated)
        return comp + self.log_weights.to(comp.dtype)

    def log_prob(self, z: Tensor, y: Tensor | None = None, calibrated: bool = False) -> Tensor:
        """``log p(z)`` (mixture) if ``y`` is None, else the class-conditional ``log N_y(z)``; ``[B]``."""
        if y is None:
            return torch.logsumexp(self.class_logits(z, calibrated), dim=1)
        comp = self.component_log_prob(z, calibrated)
        return comp.gather(1, y.long().view(-1, 1)).squeeze(1)

    def posterior(self, z: Tensor, calibrated: bool = False) -> Tensor:
        """``p(y | z)``, ``[B, K]`` (rows sum to 1)."""
        return torch.softmax(self.class_logits(z, calibrated), dim=1)

    @torch.no_grad()
    def boundary_distance(self, z: Tensor) -> Tensor:
        """Latent distance from each ``z`` to the decision boundary between its two most probable classes, ``[B]``.

        With one shared variance ``v`` the boundary of classes ``a`` and ``b`` is the hyperplane
        ``|z - mu_b|^2 - |z - mu_a|^2 + 2 v (log pi_a - log pi_b) = 0`` (normal ``mu_a - mu_b``), so the distance is
        closed form.  With one variance per class the boundary is a quadric; the pair's mean variance stands in for
        ``v`` (an approximation, exact when the two variances are equal).

        Example:
            >>> gmm = GaussianMixture(num_classes=2, dim=2, means=torch.tensor([[-2.0, 0.0], [2.0, 0.0]]))
            >>> gmm.boundary_distance(torch.tensor([[-2.0, 1.0], [0.5, 0.0]]))
            tensor([2.0000, 0.5000])
        """
        with torch.autocast(z.device.type, enabled=False):
            z = _float(z)
            top = self.class_logits(z).topk(2, dim=1).indices
            a, b = top[:, 0], top[:, 1]
            mu = self.means.to(z.dtype)
            sq = self.squared_distances(z)
            v = 0.5 * (self.variances()[a] + self.variances()[b]).to(z.dtype)
            lw = self.log_weights.to(z.dtype)
            g = 0.5 * (sq.gather(1, b[:, None]) - sq.gather(1, a[:, None])).squeeze(1) + v * (lw[a] - lw[b])
            return g.abs() / (mu[a] - mu[b]).norm(dim=1).clamp_min(1e-12)

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self, n: int, y: Tensor | int | None = None, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` latents ``mu_y + temperature * sqrt(v_y) * eps``; classes from ``pi`` if ``y`` is None.

        Returns ``(z [n, D], y [n])``.
        """
        device = self.means.device
        if y is None:
            y = torch.multinomial(self.log_weights.exp().cpu(), n, replacement=True, generator=generator)
        elif isinstance(y, int):
            y = torch.full((n,), y, dtype=torch.long)
        y = y.long().cpu()
        eps = torch.randn(n, self.dim, generator=generator).to(device=device, dtype=self.means.dtype)
        y = y.to(device)
        std = self.variances().sqrt().to(self.means.dtype)[y].unsqueeze(1)
        return self.means[y] + temperature * std * eps, y
