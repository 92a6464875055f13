"""Monotone rational-quadratic splines (Durkan et al., "Neural Spline Flows", NeurIPS 2019) and their coupling.

On ``[-B, B]`` the map is a rational-quadratic spline through ``K + 1`` knots (Gregory & Delbourgo 1982); outside it
is the identity, and the derivative at both boundary knots is 1, so the map is a C1 bijection of the real line. The
last dimension of ``params`` holds ``3K - 1`` raw numbers per coordinate: ``K`` widths and ``K`` heights (softmax,
each bin at least ``min_bin`` of the interval) and ``K - 1`` interior derivatives (``min_derivative`` plus a
softplus shifted so that a raw 0 gives exactly 1). All-zero parameters therefore give the identity.

In bin ``k`` with ``xi = (x - x_k) / w_k`` in ``[0, 1]``, slope ``s_k = h_k / w_k`` and knot derivatives
``d_k, d_{k+1}``:

    y = y_k + h_k (s_k xi^2 + d_k xi (1 - xi)) / (s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi))

The inverse solves the quadratic in ``xi`` with the root ``2c / (-b - sqrt(b^2 - 4ac))`` (no cancellation).
All spline arithmetic runs in float32 (float64 for float64 inputs) even under autocast: see
:func:`~flowgmm.bijections.logdet_dtype`.

Example:
    >>> import torch
    >>> from flowgmm.splines import RQSplineCoupling, rq_spline
    >>> x = torch.tensor([[-5.0, -1.0, 0.5, 2.0, 5.0]])
    >>> y, logabsdet = rq_spline(x, torch.zeros(1, 5, 3 * 8 - 1), bound=3.0)   # zero parameters: the identity
    >>> torch.allclose(y, x), torch.allclose(logabsdet, torch.zeros(1, 5), atol=1e-6)
    (True, True)
    >>> params = torch.randn(1, 5, 3 * 8 - 1)
    >>> y, logabsdet = rq_spline(x, params, bound=3.0)
    >>> y[0, 0].item(), y[0, 4].item()            # outside [-3, 3]: identity tails
    (-5.0, 5.0)
    >>> x_back, _ = rq_spline(y, params, bound=3.0, inverse=True)
    >>> torch.allclose(x_back, x, atol=1e-5)
    True
    >>> layer = RQSplineCoupling(torch.tensor([1.0, 1.0, 0.0, 0.0]), bins=8, tail_bound=3.0, hidden=16)
    >>> z, logdet = layer(torch.randn(6, 4))
    >>> z.shape, logdet.shape, logdet.dtype
    (torch.Size([6, 4]), torch.Size([6]), torch.float32)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from flowgmm.bijections import Bijection, logdet_dtype
from flowgmm.nets import MLP

__all__ = ["RQSplineCoupling", "rq_spline", "spline_knots", "Knots", "params_per_coordinate"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3


def params_per_coordinate(bins: int) -> int:
    """``3 K - 1``: ``K`` widths, ``K`` heights and ``K - 1`` interior derivatives."""
    return 3 * bins - 1


class Knots(NamedTuple):
    """The ``K + 1`` knots of a spline per coordinate: positions ``x``, values ``y`` and derivatives ``d``, each
    ``[..., K + 1]``; ``x`` and ``y`` run from ``-bound`` to ``bound`` and ``d`` is 1 at both ends."""

    x: Tensor
    y: Tensor
    d: Tensor


def spline_knots(
    params: Tensor, bound: float, min_bin: float = MIN_BIN, min_derivative: float = MIN_DERIVATIVE
) -> Knots:
    """Knots from raw parameters ``[..., 3K - 1]`` (computed in the parameters' dtype: cast before calling).

    Widths and heights: ``min_bin + (1 - K min_bin) softmax(raw)`` of the interval, so every bin is at least
    ``min_bin`` of it; the end knots are exactly ``-bound`` and ``bound``. The derivative offset
    ``c = log(expm1(1 - min_derivative))`` makes ``min_derivative + softplus(0 + c) = 1``, so zero parameters (a
    zero-initialised conditioner) give equal bins and unit derivatives: the identity.
    """
    bins = (params.shape[-1] + 1) // 3
    if params.shape[-1] != params_per_coordinate(bins) or bins < 1:
        raise ValueError(f"spline parameters need 3K - 1 entries per coordinate, got {params.shape[-1]}")
    if min_bin * bins >= 1:
        raise ValueError(f"min_bin={min_bin} too large for {bins} bins")
    raw = params[..., : 2 * bins].unflatten(-1, (2, bins))  # widths, heights
    raw = (raw - raw.detach().amax(-1, keepdim=True)).exp()  # softmax by hand: faster on short rows, same values
    sizes = min_bin + (1 - min_bin * bins) * (raw / raw.sum(-1, keepdim=True))
    inner = torch.cumsum(sizes[..., :-1], dim=-1) * (2 * bound) - bound
    x, y = F.pad(F.pad(inner, (1, 0), value=-bound), (0, 1), value=bound).unbind(-2)
    offset = math.log(math.expm1(1.0 - min_derivative))
    d = F.pad(min_derivative + F.softplus(params[..., 2 * bins :] + offset), (1, 1), value=1.0)
    return Knots(x, y, d)


def _bin_of(knots: Knots, v: Tensor, along: Tensor) -> tuple[Tensor, ...]:
    """The bin of every ``v`` (searched in ``along``: the knot positions or values) and that bin's
    ``x_k, w_k, y_k, h_k, d_k, d_{k+1}``, each shaped like ``v``.

    The bin is picked by a one-hot weighted sum rather than ``gather``: the same values, a backward without scatter
    (``torch.compile``'s CPU backend corrupted memory on the scatter of a multi-coupling flow's gather backward)."""
    bins = along.shape[-1] - 1
    idx = (v.unsqueeze(-1) >= along[..., 1:-1]).sum(-1, keepdim=True)  # interior knots at or below v: 0 .. K-1
    onehot = (idx == torch.arange(bins, device=v.device)).to(v.dtype)

    def pick(t: Tensor) -> tuple[Tensor, Tensor]:
        return (onehot * t[..., :-1]).sum(-1), (onehot * t[..., 1:]).sum(-1)

    (x_k, x_k1), (y_k, y_k1), (d_k, d_k1) = pick(knots.x), pick(knots.y), pick(knots.d)
    return x_k, x_k1 - x_k, y_k, y_k1 - y_k, d_k, d_k1


def _forward_inside(x: Tensor, knots: Knots) -> tuple[Tensor, Tensor]:
    x_k, w, y_k, h, d0, d1 = _bin_of(knots, x, knots.x)
    s = h / w
    xi = ((x - x_k) / w).clamp(0, 1)
    xi1 = xi * (1 - xi)
    denom = s + (d1 + d0 - 2 * s) * xi1
    y = y_k + h * (s * xi.square() + d0 * xi1) / denom
    dnum = s.square() * (d1 * xi.square() + 2 * s * xi1 + d0 * (1 - xi).square())
    return y, torch.log(dnum) - 2 * torch.log(denom)


def _inverse_inside(y: Tensor, knots: Knots) -> tuple[Tensor, Tensor]:
    x_k, w, y_k, h, d0, d1 = _bin_of(knots, y, knots.y)
    s = h / w
    dy = y - y_k
    curve = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * curve
    b = h * d0 - dy * curve
    c = -s * dy
    disc = (b.square() - 4 * a * c).clamp_min(0)
    xi = (2 * c / (-b - torch.sqrt(disc))).clamp(0, 1)  # -b - sqrt(disc) < 0 for c <= 0: no cancellation
    xi1 = xi * (1 - xi)
    denom = s + curve * xi1
    dnum = s.square() * (d1 * xi.square() + 2 * s * xi1 + d0 * (1 - xi).square())
    return x_k + xi * w, 2 * torch.log(denom) - torch.log(dnum)


def rq_spline(
    x: Tensor,
    params: Tensor,
    bound: float,
    inverse: bool = False,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Elementwise monotone RQ spline on ``[-bound, bound]``, identity outside.

    Args:
        x: ``[...]`` inputs (outputs when ``inverse``).
        params: ``[..., 3K - 1]`` raw parameters per element of ``x``.
        bound: the tail bound ``B``.
        inverse: map outputs back to inputs.

    Returns:
        ``(y, log|dy/dx|)`` elementwise (for ``inverse``: ``(x, log|dx/dy|)``), both in ``logdet_dtype(x)``
        (float32, or float64 for float64 ``x``), whatever the dtype of ``params`` or an enclosing autocast.
    """
    dtype = logdet_dtype(x)
    x = x.to(dtype)
    knots = spline_knots(params.to(dtype), bound, min_bin, min_derivative)
    inside = (x >= -bound) & (x <= bound)
    clamped = x.clamp(-bound, bound)  # the spline never sees tail points, so their gradients stay finite
    y, logabsdet = (_inverse_inside if inverse else _forward_inside)(clamped, knots)
    return torch.where(inside, y, x), torch.where(inside, logabsdet, torch.zeros_like(logabsdet))


class RQSplineCoupling(Bijection):
    """Coupling whose changed coordinates go through RQ splines conditioned on the kept ones.

    ``z[kept] = x[kept]``, ``z[changed] = spline(x[changed]; MLP(x[kept]))``, the MLP mapping the kept coordinates
    to ``3K - 1`` parameters per changed coordinate with a zero-initialised last layer (a new layer is the identity).
    The spline math runs in float32 (float64 for float64 inputs) even when the MLP runs under autocast.

    Args:
        mask: ``[D]``, 1 on the coordinates left unchanged (at least one kept and one changed).
        bins: ``K``, the number of spline bins.
        tail_bound: ``B``; the splines act on ``[-B, B]``, the identity outside.
        hidden, depth, dropout: the conditioner :class:`~flowgmm.nets.MLP`.
    """

    mask: Tensor
    kept: Tensor
    changed: Tensor
    order: Tensor

    def __init__(
        self,
        mask: Tensor,
        bins: int = 8,
        tail_bound: float = 4.0,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if mask.dim() != 1:
            raise ValueError(f"RQSplineCoupling needs a [D] mask, got shape {tuple(mask.shape)}")
        if bins < 2 or tail_bound <= 0:  # one bin with unit end slopes is the identity
            raise ValueError(f"need bins >= 2 and tail_bound > 0, got bins={bins}, tail_bound={tail_bound}")
        self.register_buffer("mask", mask.float())
        kept, changed = torch.nonzero(mask > 0).flatten(), torch.nonzero(mask == 0).flatten()
        if len(kept) == 0 or len(changed) == 0:
            raise ValueError("a coupling needs at least one kept and one changed coordinate")
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("changed", changed, persistent=False)
        self.register_buffer("order", torch.argsort(torch.cat([kept, changed])), persistent=False)
        self.bins, self.tail_bound = int(bins), float(tail_bound)
        self.net = MLP(len(kept), len(changed) * params_per_coordinate(bins), hidden, depth, dropout)

    def _transform(self, v: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        v_kept, v_changed = v[:, self.kept], v[:, self.changed]
        params = self.net(v_kept).reshape(v.shape[0], len(self.changed), params_per_coordinate(self.bins))
        out, logabsdet = rq_spline(v_changed, params, self.tail_bound, inverse=inverse)
        return torch.cat([v_kept, out.to(v.dtype)], dim=1)[:, self.order], logabsdet.sum(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, inverse=False)

    def inverse(self, z: Tensor) -> Tensor:
        return self._transform(z, inverse=True)[0]
