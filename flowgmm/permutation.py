"""A fixed permutation of vector coordinates (log-det 0), mixing coordinates between half-mask couplings.

The permutation is drawn once from a seeded generator and kept as a buffer, so a saved model reloads it exactly.

Example:
    >>> import torch
    >>> from flowgmm.permutation import Permutation
    >>> perm = Permutation(torch.tensor([2, 0, 1]))
    >>> z, logdet = perm(torch.tensor([[10.0, 20.0, 30.0]]))
    >>> z, logdet
    (tensor([[30., 10., 20.]]), tensor([0.]))
    >>> perm.inverse(z)
    tensor([[10., 20., 30.]])
    >>> Permutation.random(5, seed=1).order.sort().values.tolist()
    [0, 1, 2, 3, 4]
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowgmm.bijections import Bijection, logdet_dtype

__all__ = ["Permutation"]


class Permutation(Bijection):
    """``z = x[:, order]``; the inverse applies ``argsort(order)``.

    Args:
        order: ``[D]`` a permutation of ``0 .. D-1``.
    """

    order: Tensor
    undo: Tensor

    def __init__(self, order: Tensor):
        super().__init__()
        order = torch.as_tensor(order, dtype=torch.long)
        if order.dim() != 1 or not torch.equal(order.sort().values, torch.arange(len(order))):
            raise ValueError(f"order must be a permutation of 0..D-1, got {order.tolist()}")
        self.register_buffer("order", order)
        self.register_buffer("undo", torch.argsort(order), persistent=False)

    @classmethod
    def random(cls, dim: int, seed: int) -> Permutation:
        """A permutation of ``dim`` coordinates drawn from a generator seeded with ``seed`` (the same on every
        machine and torch version that keeps ``randperm``'s stream)."""
        return cls(torch.randperm(dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, self.order], x.new_zeros(x.shape[0], dtype=logdet_dtype(x))

    def inverse(self, z: Tensor) -> Tensor:
        return z[:, self.undo]
