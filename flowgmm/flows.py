"""Flow builders: :func:`image_flow` (multiscale RealNVP) and :func:`vector_flow` (RealNVP with MLPs).

``image_flow`` (Dinh et al. 2017; the FlowGMM paper's image model) per scale, except the last:
3 checkerboard couplings, squeeze, 3 channel-wise couplings (twice the width), factor out half the channels;
the last scale has 4 checkerboard couplings.  It starts with ``Logit(alpha)`` on ``x`` in ``[0, 1]`` and
returns the flat latent ``[B, C*H*W]`` (factored channels first).

``image_vector_flow`` is the vector flow for small images: ``Logit(alpha)`` on ``[B, C, H, W]`` in ``[0, 1]``, then
the flattened pixels through MLP couplings (for 8x8 digits it matches the image flow's accuracy at about a tenth of
the CPU per step); samples come back as images.

``vector_flow`` alternates half/half masks (first half kept, then second half kept, ...), so every
coordinate is transformed, for ``dim = 2`` too. Its couplings are affine (RealNVP, the default) or monotone
rational-quadratic splines (``coupling="spline"``, Neural Spline Flows; :mod:`flowgmm.splines`), the latter with a
learned LU linear map before every pair of couplings by default (``mixing``). With
``standardize=(mean, std)`` it starts with a fixed :class:`~flowgmm.bijections.Affine` map, so densities are in the
raw data space.

Example:
    >>> import torch
    >>> from flowgmm.flows import image_flow, image_vector_flow, vector_flow
    >>> flow = image_flow(channels=1, size=8, mid_channels=8, num_blocks=1)
    >>> z, logdet = flow(torch.rand(2, 1, 8, 8))
    >>> z.shape, logdet.shape, flow.inverse(z).shape
    (torch.Size([2, 64]), torch.Size([2]), torch.Size([2, 1, 8, 8]))
    >>> flow = image_vector_flow(channels=1, size=8, num_couplings=2, hidden=16)
    >>> z, logdet = flow(torch.rand(2, 1, 8, 8))
    >>> z.shape, flow.inverse(z).shape
    (torch.Size([2, 64]), torch.Size([2, 1, 8, 8]))
    >>> flow = vector_flow(dim=2, num_couplings=4, hidden=16)
    >>> flow(torch.randn(3, 2))[0].shape, flow.dim
    (torch.Size([3, 2]), 2)
    >>> flow = vector_flow(dim=3, num_couplings=2, hidden=16, coupling="spline", bins=8, tail_bound=4.0, mixing="none")
    >>> x = torch.randn(3, 3)
    >>> torch.allclose(flow(x)[0], x, atol=1e-5)   # zero-initialised conditioners: the identity
    True
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from torch import Tensor

from flowgmm.bijections import Affine, Bijection, Flatten, Sequential
from flowgmm.coupling import AffineCoupling, channel_mask, checkerboard_mask, half_mask
from flowgmm.linear import LULinear
from flowgmm.nets import MLP, Norm, ResNet
from flowgmm.permutation import Permutation
from flowgmm.preprocess import Logit
from flowgmm.reshape import FactorOut, Squeeze
from flowgmm.splines import RQSplineCoupling

__all__ = ["image_flow", "image_vector_flow", "vector_flow", "COUPLINGS", "MIXINGS", "DEFAULT_MIXING"]

Coupling = Literal["affine", "spline"]
COUPLINGS: tuple[str, ...] = ("affine", "spline")
Mixing = Literal["none", "permute", "lu"]
MIXINGS: tuple[str, ...] = ("none", "permute", "lu")
DEFAULT_MIXING: dict[str, Mixing] = {"affine": "none", "spline": "lu"}  # measured: bench/bench_vector_flow.py


def _checkerboard(shape: Sequence[int], parity: int, mid: int, blocks: int, norm: Norm) -> AffineCoupling:
    c, h, w = shape
    return AffineCoupling(checkerboard_mask(c, h, w, parity), ResNet(c, 2 * c, mid, blocks, norm))


def _channelwise(shape: Sequence[int], parity: int, mid: int, blocks: int, norm: Norm) -> AffineCoupling:
    c, h, w = shape
    return AffineCoupling(channel_mask(c, h, w, parity), ResNet(c, 2 * c, mid, blocks, norm))


def _scale(shape: tuple[int, int, int], scales_left: int, mid: int, blocks: int, norm: Norm) -> Bijection:
    """One scale of the multiscale RealNVP, mapping ``[B, C, H, W]`` to a flat ``[B, C*H*W]``."""
    c, h, w = shape
    if scales_left == 1:
        couplings = [_checkerboard(shape, p, mid, blocks, norm) for p in (0, 1, 0, 1)]
        return Sequential(*couplings, Flatten(shape))
    if h % 2 or w % 2:
        raise ValueError(f"cannot squeeze a {h}x{w} image: reduce num_scales")
    squeezed = (4 * c, h // 2, w // 2)
    inner = _scale((2 * c, h // 2, w // 2), scales_left - 1, 2 * mid, blocks, norm)
    return Sequential(
        *[_checkerboard(shape, p, mid, blocks, norm) for p in (0, 1, 0)],
        Squeeze(),
        *[_channelwise(squeezed, p, 2 * mid, blocks, norm) for p in (0, 1, 0)],
        FactorOut(squeezed, keep=2 * c, inner=inner),
    )


def image_flow(
    channels: int = 1,
    size: int = 28,
    num_scales: int = 2,
    mid_channels: int = 64,
    num_blocks: int = 8,
    alpha: float = 0.05,
    norm: Norm = "batch",
) -> Sequential:
    """Multiscale RealNVP for ``[B, channels, size, size]`` images in ``[0, 1]``.

    Args:
        channels, size: input image shape ``(channels, size, size)``; ``size`` must be divisible by
            ``2 ** (num_scales - 1)``.
        num_scales: number of scales (2 in the paper: 10 couplings in all).
        mid_channels: ResNet width at the first scale; doubled after every squeeze (64/128 in the paper).
        num_blocks: residual blocks per ResNet (8 in the paper).
        alpha: logit preprocessing constant.
        norm: ``"batch"`` (paper), ``"act"`` (ActNorm: no batch statistics, the same under DDP) or ``"none"``
            inside the ResNets.

    Returns:
        a :class:`Sequential` with ``input_shape = (channels, size, size)`` and ``dim = channels*size**2``.
    """
    shape = (channels, size, size)
    body = _scale(shape, num_scales, mid_channels, num_blocks, norm)
    return Sequential(Logit(alpha), body, input_shape=shape)


def image_vector_flow(
    channels: int = 1,
    size: int = 8,
    num_couplings: int = 6,
    hidden: int = 128,
    depth: int = 2,
    alpha: float = 0.05,
    *,
    coupling: Coupling = "affine",
    bins: int = 8,
    tail_bound: float = 4.0,
    mixing: Mixing | None = None,
) -> Sequential:
    """``Logit(alpha)`` on ``[B, channels, size, size]`` images in ``[0, 1]``, then a :func:`vector_flow` over the
    flattened pixels (``coupling``, ``bins``, ``tail_bound``, ``mixing`` as there; the logit maps ``[0, 1]`` into
    ``[-logit(1 - alpha), logit(1 - alpha)]``, about ``[-2.9, 2.9]`` for 0.05, inside the default tail bound);
    ``dim = channels * size**2`` and :meth:`inverse` returns images."""
    shape = (channels, size, size)
    dim = channels * size * size
    body = vector_flow(
        dim, num_couplings, hidden, depth, coupling=coupling, bins=bins, tail_bound=tail_bound, mixing=mixing
    )
    return Sequential(Logit(alpha), Flatten(shape), *body.layers, input_shape=shape)


def vector_flow(
    dim: int,
    num_couplings: int = 6,
    hidden: int = 128,
    depth: int = 2,
    standardize: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None = None,
    dropout: float = 0.0,
    *,
    coupling: Coupling = "affine",
    bins: int = 8,
    tail_bound: float = 4.0,
    mixing: Mixing | None = None,
) -> Sequential:
    """A flow for ``[B, dim]`` vectors: MLP couplings on alternating half/half masks.

    Args:
        dim: data dimension (>= 2).
        num_couplings: number of couplings (use an even number so both halves change equally).
        hidden, depth: width and number of hidden layers of each coupling MLP.
        standardize: optional ``(mean, std)``; adds a fixed first layer ``(x - mean) / std``.
        dropout: dropout inside the coupling MLPs (0 by default; the reference used 0.5 for tabular data).
        coupling: ``"affine"`` (RealNVP: :class:`~flowgmm.coupling.AffineCoupling`) or ``"spline"`` (Neural Spline
            Flows: :class:`~flowgmm.splines.RQSplineCoupling`, monotone rational-quadratic splines).
        bins, tail_bound: spline couplings only: ``K`` bins on ``[-tail_bound, tail_bound]``, the identity outside
            (standardized inputs: 4 covers all but a few outliers, which pass through unchanged in that layer).
        mixing: a layer before every pair of couplings (each pair changes every coordinate once; the layer regroups
            the halves, so coordinates that shared a half condition on each other): ``"none"``, ``"permute"`` (a
            fixed random :class:`~flowgmm.permutation.Permutation`) or ``"lu"`` (a learned
            :class:`~flowgmm.linear.LULinear`, ``P L U x + b``, a permutation at initialisation). ``None``: the
            default of the coupling, :data:`DEFAULT_MIXING` (affine: ``"none"``, the architecture of specs written
            before the option).
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    mixing = DEFAULT_MIXING[coupling] if mixing is None else mixing
    if mixing not in MIXINGS:
        raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
    layers: list[Bijection] = []
    if standardize is not None:
        layers.append(Affine(*standardize))
    for i in range(num_couplings):
        if i % 2 == 0 and mixing != "none":
            layers.append(Permutation.random(dim, seed=i // 2) if mixing == "permute" else LULinear(dim, seed=i // 2))
        mask = half_mask(dim, parity=i % 2)
        if coupling == "spline":
            layers.append(RQSplineCoupling(mask, bins, tail_bound, hidden, depth, dropout))
        else:
            layers.append(AffineCoupling(mask, MLP(dim, 2 * dim, hidden, depth, dropout)))
    return Sequential(*layers, input_shape=(dim,))
