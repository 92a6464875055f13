"""Calibration by variance scaling: one scalar ``s`` multiplying every component variance.

With the flow frozen, ``s`` minimises the validation NLL ``-mean log p(y | z)`` of precomputed latents.
This is temperature scaling: for a shared isotropic variance ``v`` the ``|z|^2`` term is the same for
every class, so ``log p(y=k | z) = log softmax_k((z . mu_k - |mu_k|^2 / 2) / (v s) + log pi_k)``, i.e. a
linear classifier in ``z`` whose logits are divided by the temperature ``T = s``.  (With per-class
variances the ``-D/2 log v_k`` terms stay unscaled, so it is a temperature on the distance terms only.)

The search is 1-D on ``log s``: a coarse grid, then golden-section refinement.  The squared distances are
computed once, so each evaluation costs ``O(N K)``.

Example:
    >>> import torch
    >>> from flowgmm.mixture import GaussianMixture
    >>> from flowgmm.calibration import fit_variance_scale
    >>> gmm = GaussianMixture(3, 4, seed=0)
    >>> z, y = gmm.sample(4000, generator=torch.Generator().manual_seed(0))
    >>> z = gmm.means[y] + (z - gmm.means[y]) * 2.0      # true variance 4
    >>> round(fit_variance_scale(gmm, z, y), 1)
    4.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowgmm.mixture import GaussianMixture

__all__ = ["fit_variance_scale", "validation_nll"]


def validation_nll(mixture: GaussianMixture, z: Tensor, y: Tensor, scale: float) -> float:
    """``-mean log p(y | z)`` with all variances multiplied by ``scale`` (the stored scale is ignored)."""
    with torch.no_grad():
        logits = mixture.component_log_prob(z, variance_scale=scale)
        logits = logits + mixture.log_weights.to(logits.dtype)
        return F.cross_entropy(logits, y.long()).item()


@torch.no_grad()
def fit_variance_scale(
    mixture: GaussianMixture,
    z_val: Tensor,
    y_val: Tensor,
    *,
    log_range: tuple[float, float] = (-12.0, 12.0),
    grid_points: int = 49,
    tol: float = 1e-6,
) -> float:
    """The variance scale ``s`` minimising validation NLL; returns ``s`` as a float.

    Args:
        mixture: the trained mixture (not modified; apply the result with ``model.set_variance_scale``).
        z_val, y_val: latents ``f(x_val)`` of the frozen flow (``[N, D]``) and their labels (``[N]``).
        log_range: search interval for ``log s``.
        grid_points: coarse grid size before golden-section refinement.
        tol: tolerance on ``log s``.
    """
    sq = mixture.squared_distances(z_val)
    log_w = mixture.log_weights.to(sq.dtype)
    y = y_val.long().to(sq.device)

    def objective(log_s: float) -> float:
        logits = mixture._component_from_sq(sq, False, math.exp(log_s)) + log_w
        return F.cross_entropy(logits, y).item()

    grid = torch.linspace(*log_range, grid_points).tolist()
    values = [objective(g) for g in grid]
    i = min(range(grid_points), key=values.__getitem__)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid_points - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    return math.exp((lo + hi) / 2.0)
