"""Affine coupling layers and their masks.

A binary mask ``m`` (1 = kept, 0 = changed) splits the input.  A network sees the kept part ``x * m`` and
returns ``(s_raw, t)``; the log-scale is bounded, ``s = scale * tanh(s_raw)`` with a learned per-channel
``scale``, and both ``s`` and ``t`` are masked to the changed positions:

    z = m * x + (1 - m) * (x + t) * exp(s),        log|det J| = sum over changed positions of s.

Masks: :func:`checkerboard_mask` and :func:`channel_mask` for images ``[C, H, W]``, :func:`half_mask` for
vectors ``[D]``.  The network's last layer is zero-initialised, so a new coupling is the identity.

Example:
    >>> import torch
    >>> from flowgmm.coupling import AffineCoupling, half_mask
    >>> from flowgmm.nets import MLP
    >>> layer = AffineCoupling(half_mask(4, parity=0), MLP(4, 8, hidden=16))
    >>> x = torch.randn(3, 4)
    >>> z, logdet = layer(x)
    >>> torch.equal(z, x), logdet.tolist()     # identity at initialisation
    (True, [0.0, 0.0, 0.0])
    >>> torch.allclose(layer.inverse(z), x)
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowgmm.bijections import Bijection, logdet_dtype

__all__ = ["AffineCoupling", "checkerboard_mask", "channel_mask", "half_mask"]


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """``[C, H, W]`` mask with 1 where ``(i + j + parity)`` is even (the same pattern in every channel)."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    board = ((i + j + parity) % 2 == 0).float()
    return board.expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """``[C, H, W]`` mask keeping the first ``C // 2`` channels (``parity=0``) or the others (``parity=1``)."""
    if channels < 2:
        raise ValueError("a channel-wise mask needs at least 2 channels")
    keep_first = torch.arange(channels) < channels // 2
    keep = keep_first if parity == 0 else ~keep_first
    return keep.float().view(-1, 1, 1).expand(channels, height, width).clone()


def half_mask(dim: int, parity: int = 0) -> Tensor:
    """``[D]`` mask keeping the first ``D // 2`` coordinates (``parity=0``) or the others (``parity=1``)."""
    if dim < 2:
        raise ValueError("a coupling needs at least 2 dimensions")
    keep_first = torch.arange(dim) < dim // 2
    return (keep_first if parity == 0 else ~keep_first).float()


class AffineCoupling(Bijection):
    """Masked affine coupling ``z = m x + (1 - m)(x + t(m x)) exp(s(m x))`` with bounded ``s``.

    Args:
        mask: ``[C, H, W]`` or ``[D]`` mask, 1 on the positions left unchanged.
        net: module mapping ``[B, *mask.shape]`` to ``[B, 2 C, H, W]`` (or ``[B, 2 D]``): ``(s_raw, t)``
            stacked along dim 1.  Its last layer should be zero-initialised.
    """

    mask: Tensor

    def __init__(self, mask: Tensor, net: nn.Module):
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.net = net
        channels = mask.shape[0]
        # learned per-channel bound on |s| (RealNVP's Rescale); per coordinate for vectors
        self.scale = nn.Parameter(torch.ones(channels, *([1] * (mask.dim() - 1))))

    def _scale_shift(self, x_kept: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.net(x_kept).chunk(2, dim=1)
        changed = 1.0 - self.mask
        s = self.scale * torch.tanh(s_raw) * changed
        return s, t * changed

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x * self.mask)
        z = (x + t) * torch.exp(s)  # s = t = 0 on kept positions, so they pass through unchanged
        logdet = s.to(logdet_dtype(x)).flatten(1).sum(1)
        return z, logdet

    def inverse(self, z: Tensor) -> Tensor:
        s, t = self._scale_shift(z * self.mask)
        return z * torch.exp(-s) - t
