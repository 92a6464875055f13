"""Calibration by variance scaling: one scalar ``s`` multiplying every component variance.

With the flow frozen, ``s`` minimises the validation NLL ``-mean log p(y | z)`` of precomputed latents.
This is temperature scaling: for a shared isotropic variance ``v`` the ``|z|^2`` term is the same for
every class, so ``log p(y=k | z) = log softmax_k((z . mu_k - |mu_k|^2 / 2) / (v s) + log pi_k)``, i.e. a
linear classifier in ``z`` whose logits are divided by the temperature ``T = s``.  (With per-class
variances the ``-D/2 log v_k`` terms stay unscaled, so it is a temperature on the distance terms only.)

The search is 1-D on ``log s``: a coarse grid, then golden-section refinement.  The squared distances are
computed once, so each evaluation costs ``O(N K)``.

:func:`fit_variance_scale` is the plain fit.  With few validation rows it is not safe: one misclassified row
among ten pulls ``s`` to x27 and every served probability towards uniform; ten correct rows push ``s`` towards 0
and every probability to 0 or 1.  :func:`choose_variance_scale`, the rule the pipeline serves, regularises it
twice; ``bench/bench_calibration.py`` chose it (held-out NLL never worse than at ``s = 1`` by more than 0.002 on
average over subsampled validation sets of 5 to 200 rows, real models and synthetic mixtures, while 50 rows or more
keep the plain fit's whole gain):

1. a normal prior on ``log s`` (MAP): ``sum_i NLL_i(s) + (log s)^2 / (2 tau^2)`` with ``tau = PRIOR_TAU`` above
   ``s = 1`` and ``PRIOR_TAU_BELOW`` below it: sharpening can cost a held-out error unbounded nats, softening at
   most ``log K`` a row.  The penalty is in nats against a *sum* over rows, so it matters only when the rows carry
   little evidence; hundreds of rows keep an MNIST-like x456.
2. cross-fitting: the rows are cut into ``FOLDS`` class-stratified folds; on each, the MAP scale of the other
   folds is scored on the held-out fold against ``s = 1``.  The MAP scale of all rows is served only if it wins
   out of fold by more than ``MARGIN`` nats in total, else ``s = 1`` (one misclassified row stays one row).
   Fewer than ``MIN_ROWS`` rows (two a fold) keep ``s = 1``: a one-row fold is one example's NLL, and on iris
   (6 validation rows) a single such row won the fit 7 nats out of fold and raised test NLL from 0.69 to 0.89.

Example:
    >>> import torch
    >>> from flowgmm.mixture import GaussianMixture
    >>> from flowgmm.calibration import choose_variance_scale, fit_variance_scale
    >>> gmm = GaussianMixture(3, 4, seed=0)
    >>> z, y = gmm.sample(4000, generator=torch.Generator().manual_seed(0))
    >>> z = gmm.means[y] + (z - gmm.means[y]) * 2.0      # true variance 4
    >>> round(fit_variance_scale(gmm, z, y), 1)
    4.0
    >>> c = choose_variance_scale(gmm, z, y)
    >>> round(c.scale, 1)
    4.0
    >>> print(c.note)
    cross-fit, 5 folds: kept the fit (out-of-fold gain 2187.5 nats > 2); prior sd of log s 2 / 0.5 below 1; n=4000
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowgmm.mixture import GaussianMixture

__all__ = [
    "Calibration",
    "FOLDS",
    "MARGIN",
    "MIN_ROWS",
    "PRIOR_TAU",
    "choose_variance_scale",
    "fit_variance_scale",
    "validation_nll",
]

PRIOR_TAU = 2.0  # prior sd of log s above 0: s up to x55 within 2 sd; the evidence of many rows overrides it
FOLDS = 5  # cross-fitting folds
PRIOR_TAU_BELOW = 0.5  # prior sd of log s below 1: sharpening risks unbounded NLL, softening at most log K a row
MIN_ROWS = 2 * FOLDS  # validation rows below which s = 1 is served: every held-out fold needs two rows
MARGIN = 2.0  # nats of out-of-fold NLL (summed over the rows) the fitted scale must win by
LOG_RANGE = (-12.0, 12.0)  # search interval for log s


@dataclass(frozen=True)
class Calibration:
    """The served scale, the unregularised fit, and how the served one was chosen (for the results and MLflow)."""

    scale: float  # the variance scale served
    fitted: float  # the plain validation-NLL fit (no prior, no cross-fitting)
    note: str  # e.g. "cross-fit, 5 folds: kept x1 (out-of-fold gain -3.1 nats <= 2); prior sd ...; n=10"


def validation_nll(mixture: GaussianMixture, z: Tensor, y: Tensor, scale: float) -> float:
    """``-mean log p(y | z)`` with all variances multiplied by ``scale`` (the stored scale is ignored)."""
    with torch.no_grad():
        logits = mixture.component_log_prob(z, variance_scale=scale)
        logits = logits + mixture.log_weights.to(logits.dtype)
        return F.cross_entropy(logits, y.long()).item()


class _Curve:
    """Summed ``-log p(y | z)`` over some rows as a function of ``log s``, from their squared distances to the
    means (float64, computed once)."""

    def __init__(self, mixture: GaussianMixture, sq: Tensor, y: Tensor):
        self.mixture, self.sq, self.y = mixture, sq, y
        self.log_w = mixture.log_weights.detach().double().to(sq.device)

    @classmethod
    def of(cls, mixture: GaussianMixture, z: Tensor, y: Tensor) -> _Curve:
        sq = mixture.squared_distances(z.detach()).double()
        return cls(mixture, sq, y.long().to(sq.device))

    def subset(self, rows: Tensor) -> _Curve:
        return _Curve(self.mixture, self.sq[rows], self.y[rows])

    def nll(self, log_s: float) -> float:
        """Summed NLL at ``s = exp(log_s)``."""
        logits = self.mixture._component_from_sq(self.sq, False, math.exp(log_s)) + self.log_w
        return F.cross_entropy(logits, self.y, reduction="sum").item()

    def nll_grid(self, log_s: Tensor) -> Tensor:
        """:meth:`nll` at every point of ``log_s`` (``[G]``), a few points per pass (at most ~32 MB of logits)."""
        step = max(1, 4_000_000 // max(1, self.sq.numel()))
        out = []
        for chunk in log_s.split(step):
            scale = chunk.exp().to(self.sq)[:, None, None]
            logits = self.mixture._component_from_sq(self.sq[None], False, scale) + self.log_w
            picked = logits.gather(2, self.y.view(1, -1, 1).expand(len(chunk), -1, 1)).squeeze(2)
            out.append((logits.logsumexp(2) - picked).sum(1))
        return torch.cat(out)

    def fit(self, tau: float | None = None, tau_below: float | None = None, grid_points: int = 49, tol: float = 1e-5):
        """``log s`` minimising the summed NLL plus ``(log s)^2 / (2 tau^2)`` (``tau_below`` in place of ``tau``
        where ``s < 1``; None: no penalty on that side)."""
        up = 0.0 if tau is None else 0.5 / tau**2
        down = 0.0 if tau_below is None else 0.5 / tau_below**2
        return _minimise(
            lambda log_s: self.nll(log_s) + (up if log_s > 0 else down) * log_s**2,
            lambda log_s: self.nll_grid(log_s) + torch.where(log_s > 0, up, down) * log_s.square(),
            grid_points,
            tol,
        )


def _minimise(objective, on_grid, grid_points: int, tol: float) -> float:
    """A coarse grid over ``LOG_RANGE`` (``on_grid`` evaluates it in one pass), then golden-section search around its
    best point."""
    grid = torch.linspace(*LOG_RANGE, grid_points, dtype=torch.float64)
    values = on_grid(grid).tolist()
    grid = grid.tolist()
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
    return (lo + hi) / 2.0


@torch.no_grad()
def fit_variance_scale(
    mixture: GaussianMixture,
    z_val: Tensor,
    y_val: Tensor,
    *,
    prior_tau: float | None = None,
    prior_tau_below: float | None = None,
    grid_points: int = 49,
    tol: float = 1e-5,
) -> float:
    """The variance scale ``s`` minimising validation NLL (MAP under ``log s ~ N(0, prior_tau^2)`` if given).

    Args:
        mixture: the trained mixture (not modified; apply the result with ``model.set_variance_scale``).
        z_val, y_val: latents ``f(x_val)`` of the frozen flow (``[N, D]``) and their labels (``[N]``).
        prior_tau: prior sd of ``log s``; None fits validation NLL alone.
        prior_tau_below: the prior sd where ``s < 1`` (sharpening); default ``prior_tau``.
        grid_points: coarse grid size before golden-section refinement.
        tol: tolerance on ``log s``.
    """
    below = prior_tau if prior_tau_below is None else prior_tau_below
    return math.exp(_Curve.of(mixture, z_val, y_val).fit(prior_tau, below, grid_points, tol))


def stratified_folds(y: Tensor, folds: int) -> Tensor:
    """A fold index per row: rows shuffled (seed 0), then each class dealt round-robin, so every fold holds its
    share of each class.

    >>> stratified_folds(torch.tensor([0, 0, 0, 1, 1, 1]), 3).sort().values.tolist()
    [0, 0, 1, 1, 2, 2]
    """
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    order = perm[torch.sort(y.cpu()[perm], stable=True).indices]
    fold = torch.empty(len(y), dtype=torch.long)
    fold[order] = torch.arange(len(y)) % folds
    return fold


@torch.no_grad()
def choose_variance_scale(
    mixture: GaussianMixture,
    z_val: Tensor,
    y_val: Tensor,
    *,
    prior_tau: float | None = PRIOR_TAU,
    prior_tau_below: float | None = PRIOR_TAU_BELOW,
    folds: int = FOLDS,
    margin: float = MARGIN,
) -> Calibration:
    """The served scale: the MAP fit if it beats ``s = 1`` by more than ``margin`` nats on held-out folds of
    validation, else ``s = 1`` (``prior_tau=None``, ``prior_tau_below=None``: no prior on that side)."""
    curve = _Curve.of(mixture, z_val, y_val)
    n = len(curve.y)
    fitted = math.exp(curve.fit())
    tau = (prior_tau, prior_tau_below)
    prior = "no prior" if tau == (None, None) else f"prior sd of log s {prior_tau:g} / {prior_tau_below:g} below 1"
    if n < 2 * folds:
        return Calibration(1.0, fitted, f"too few rows to cross-fit {folds} folds of two: kept x1; n={n}")
    k = folds
    fold = stratified_folds(curve.y, k).to(curve.sq.device)
    gain = 0.0  # out-of-fold NLL at s = 1 minus at the scale fit on the other folds
    for f in range(k):
        held = curve.subset(fold == f)
        log_s = curve.subset(fold != f).fit(*tau)
        gain += held.nll(0.0) - held.nll(log_s)
    keep = gain > margin
    verdict = "kept the fit" if keep else "kept x1"
    note = f"cross-fit, {k} folds: {verdict} (out-of-fold gain {gain:.1f} nats {'>' if keep else '<='} {margin:g}); "
    note += f"{prior}; n={n}"
    return Calibration(math.exp(curve.fit(*tau)) if keep else 1.0, fitted, note)
