"""A learned invertible linear map in LU form (Kingma & Dhariwal 2018; Durkan et al. 2019 between spline couplings).

``z = P L U x + b`` with ``P`` a fixed permutation, ``L`` unit lower triangular, ``U`` upper triangular with a
positive diagonal ``exp(log_diag)``: ``log|det| = sum(log_diag)`` in closed form, and the inverse is two triangular
solves. Initialised at ``L = U = I``, ``b = 0``: a new layer is the permutation ``P``. The map runs in float32
(float64 for float64 inputs) even under autocast, so a bf16 region does not round the flow's values.

Example:
    >>> import torch
    >>> from flowgmm.linear import LULinear
    >>> layer = LULinear(3, seed=0)
    >>> with torch.no_grad():
    ...     _ = layer.lower.normal_(), layer.upper.normal_(), layer.log_diag.normal_(), layer.bias.normal_()
    >>> x = torch.randn(4, 3)
    >>> z, logdet = layer(x)
    >>> torch.allclose(layer.inverse(z), x, atol=1e-5), torch.allclose(logdet, layer.log_diag.sum().expand(4))
    (True, True)
    >>> bool(torch.allclose(logdet[0], torch.linalg.slogdet(layer.weight())[1]))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowgmm.bijections import Bijection, logdet_dtype

__all__ = ["LULinear"]


class LULinear(Bijection):
    """``z = W x + b`` with ``W = P L U`` (see the module docstring).

    Args:
        dim: ``D``.
        seed: seeds the fixed permutation ``P`` (kept as a buffer, so a saved model reloads it exactly).
    """

    order: Tensor

    def __init__(self, dim: int, seed: int = 0):
        super().__init__()
        self.register_buffer("order", torch.randperm(dim, generator=torch.Generator().manual_seed(seed)))
        self.lower = nn.Parameter(torch.zeros(dim, dim))
        self.upper = nn.Parameter(torch.zeros(dim, dim))
        self.log_diag = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def _factors(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        eye = torch.eye(len(self.order), dtype=dtype, device=self.order.device)
        lower = torch.tril(self.lower.to(dtype), -1) + eye
        upper = torch.triu(self.upper.to(dtype), 1) + torch.diag(self.log_diag.to(dtype).exp())
        return lower, upper

    def weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``W = P L U`` as a dense matrix (row ``i`` of ``W`` is row ``order[i]`` of ``L U``)."""
        lower, upper = self._factors(dtype)
        return (lower @ upper)[self.order]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dtype = logdet_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            lower, upper = self._factors(dtype)
            z = ((x.to(dtype) @ upper.T) @ lower.T)[:, self.order] + self.bias.to(dtype)
            logdet = self.log_diag.to(dtype).sum().expand(x.shape[0])
        return z.to(x.dtype), logdet

    def inverse(self, z: Tensor) -> Tensor:
        dtype = logdet_dtype(z)
        with torch.autocast(z.device.type, enabled=False):
            lower, upper = self._factors(dtype)
            rhs = torch.empty_like(z, dtype=dtype)
            rhs[:, self.order] = z.to(dtype) - self.bias.to(dtype)  # undo P
            v = torch.linalg.solve_triangular(lower, rhs.T, upper=False, unitriangular=True)
            x = torch.linalg.solve_triangular(upper, v, upper=True).T
        return x.to(z.dtype)
