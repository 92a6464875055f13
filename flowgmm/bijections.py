"""Bijections: the base class, composition and a fixed elementwise affine map.

A :class:`Bijection` maps ``x`` to ``(z, logdet)`` where ``logdet[b] = log|det dz/dx|`` for example ``b``,
and ``inverse(z)`` maps back exactly.  Log-determinants are accumulated in float32 (float64 when the input
is float64), even when the layers run under autocast in a lower precision.

Example:
    >>> import torch
    >>> from flowgmm.bijections import Affine, Sequential
    >>> flow = Sequential(Affine(mean=torch.tensor([1.0, 2.0]), std=torch.tensor([2.0, 4.0])))
    >>> z, logdet = flow(torch.tensor([[3.0, 6.0]]))
    >>> z, logdet   # (x - mean) / std, -sum(log std)
    (tensor([[1., 1.]]), tensor([-2.0794]))
    >>> flow.inverse(z)
    tensor([[3., 6.]])
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Bijection", "Sequential", "Affine", "Flatten", "logdet_dtype"]


def logdet_dtype(x: Tensor) -> torch.dtype:
    """The dtype log-determinants are accumulated in: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Bijection(nn.Module):
    """An invertible map with an exact log-determinant.

    Subclasses implement ``forward(x) -> (z, logdet)`` with ``logdet`` of shape ``[B]`` (float32, or
    float64 for float64 inputs) and ``inverse(z) -> x``.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Sequential(Bijection):
    """Composition ``f_n o ... o f_1``; the log-determinants add up.

    Attributes ``input_shape`` (per-example shape, e.g. ``(1, 28, 28)`` or ``(2,)``) and ``dim`` (number of
    latent dimensions) are set by the flow builders and used by :class:`flowgmm.FlowGMM` to infer ``dim``.
    """

    def __init__(self, *layers: Bijection | Iterable[Bijection], input_shape: Sequence[int] | None = None):
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], nn.Module):
            layers = tuple(layers[0])
        self.layers = nn.ModuleList(layers)
        self.input_shape: tuple[int, ...] | None = tuple(input_shape) if input_shape is not None else None
        self.dim: int | None = math.prod(self.input_shape) if self.input_shape is not None else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = torch.zeros(x.shape[0], dtype=logdet_dtype(x), device=x.device)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld.to(logdet.dtype)
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Bijection:
        return self.layers[i]


def _as_tensor(a: Tensor | np.ndarray | Sequence[float]) -> Tensor:
    return torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a, dtype=torch.float32)


class Affine(Bijection):
    """Fixed elementwise standardisation ``z = (x - mean) / std``; log-det ``-sum(log std)``.

    ``mean`` and ``std`` are buffers (saved in the state dict, never trained) broadcast against the
    per-example shape.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Tensor | np.ndarray, std: Tensor | np.ndarray):
        super().__init__()
        mean_t, std_t = _as_tensor(mean), _as_tensor(std)
        if bool((std_t <= 0).any()):
            raise ValueError("std must be positive")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _logdet(self, x: Tensor) -> Tensor:
        per_example = -torch.log(self.std.to(logdet_dtype(x))).expand(x.shape[1:]).sum()
        return per_example.expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.mean) / self.std, self._logdet(x)

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean


class Flatten(Bijection):
    """Reshape ``[B, *shape]`` to ``[B, prod(shape)]`` (log-det 0); the inverse restores ``shape``."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], -1), x.new_zeros(x.shape[0], dtype=logdet_dtype(x))

    def inverse(self, z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *self.shape)
