"""Volume-preserving reshapes: :class:`Squeeze` (space-to-depth) and :class:`FactorOut` (multiscale).

Both have log-determinant 0.  ``FactorOut`` sends the first ``keep`` channels through an inner flow and
passes the other channels straight to the latent (RealNVP's multiscale architecture); its output is the
flat concatenation ``[factored channels, inner latent]``.

Example:
    >>> import torch
    >>> from flowgmm.bijections import Flatten
    >>> from flowgmm.reshape import FactorOut, Squeeze
    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> y, _ = Squeeze()(x)
    >>> y.shape
    torch.Size([1, 4, 2, 2])
    >>> split = FactorOut((4, 2, 2), keep=2, inner=Flatten((2, 2, 2)))
    >>> z, logdet = split(y)
    >>> z.shape, logdet
    (torch.Size([1, 16]), tensor([0.]))
    >>> torch.equal(Squeeze().inverse(split.inverse(z)), x)
    True
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from flowgmm.bijections import Bijection, logdet_dtype

__all__ = ["Squeeze", "FactorOut"]


class Squeeze(Bijection):
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (each 2x2 block becomes 4 channels)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0], dtype=logdet_dtype(x))

    def inverse(self, z: Tensor) -> Tensor:
        return F.pixel_shuffle(z, self.factor)


class FactorOut(Bijection):
    """Split channels: the first ``keep`` go through ``inner``, the rest are factored out to the latent.

    Args:
        shape: per-example input shape ``(C, H, W)``.
        keep: number of channels passed on to ``inner``.
        inner: bijection mapping ``[B, keep, H, W]`` to a flat ``[B, keep * H * W]`` latent.
    """

    def __init__(self, shape: Sequence[int], keep: int, inner: Bijection):
        super().__init__()
        channels, height, width = shape
        if not 0 < keep < channels:
            raise ValueError(f"keep must be in (0, {channels})")
        self.shape = (channels, height, width)
        self.keep = keep
        self.inner = inner
        self.num_factored = (channels - keep) * height * width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, factored = x[:, : self.keep], x[:, self.keep :]
        z_inner, logdet = self.inner(kept)
        return torch.cat([factored.flatten(1), z_inner.flatten(1)], dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        channels, height, width = self.shape
        factored = z[:, : self.num_factored].reshape(-1, channels - self.keep, height, width)
        kept = self.inner.inverse(z[:, self.num_factored :])
        return torch.cat([kept, factored], dim=1)
