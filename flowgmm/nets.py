"""Scale/translate networks for couplings: a convolutional :class:`ResNet` and an :class:`MLP`.

Both map the kept part of the input to ``2 x`` its channels (``s_raw`` and ``t`` stacked on dim 1), and
both zero-initialise their last layer so that a new coupling is the identity map.

The ResNet follows RealNVP (Dinh et al. 2017, as in the FlowGMM code): optional input BatchNorm, CReLU
(``[x, -x]`` then ReLU), a 3x3 weight-normalised conv, ``num_blocks`` pre-activation residual blocks whose
outputs are also summed through 1x1 skip convs, then norm, ReLU and a zero-initialised 1x1 conv.
``norm="none"`` removes every BatchNorm (the flow is then the same function in train and eval mode).
``norm="act"`` uses :class:`ActNorm2d` instead: a per-channel affine map initialised from the first training batch
(statistics averaged over every rank when ``torch.distributed`` is running), then learned like any weight. It keeps
no running statistics, so it is the same under DDP on CPU and GPU and in train and eval mode. With BatchNorm, a
forward without gradient (FlowGMM-cons' second view) must not move the running statistics: see
:func:`frozen_batch_stats`.

Example:
    >>> import torch
    >>> from flowgmm.nets import MLP, ResNet
    >>> ResNet(in_channels=2, out_channels=4, mid_channels=8, num_blocks=1)(torch.randn(5, 2, 4, 4)).shape
    torch.Size([5, 4, 4, 4])
    >>> MLP(3, 6, hidden=16, depth=2)(torch.randn(5, 3)).abs().max().item()   # zero last layer
    0.0
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["ActNorm2d", "MLP", "ResNet", "frozen_batch_stats"]

Norm = Literal["batch", "act", "none"]


class ActNorm2d(nn.Module):
    """``(x - b) * exp(-log_s)`` per channel, with ``b`` and ``log_s`` set from the first training batch so that the
    output has zero mean and unit variance per channel (averaged over ranks under ``torch.distributed``).

    >>> n = ActNorm2d(3)
    >>> y = n(torch.randn(64, 3, 4, 4) * 5 + 2)
    >>> bool(y.mean().abs() < 1e-5), bool((y.std() - 1).abs() < 1e-2)
    (True, True)
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    @torch.no_grad()
    def _init(self, x: Tensor) -> None:
        moments = torch.stack([x.float().mean((0, 2, 3)), x.float().pow(2).mean((0, 2, 3))])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)  # every rank runs its first training forward in the same step
            moments /= dist.get_world_size()
        mean, var = moments[0], (moments[1] - moments[0] ** 2).clamp_min(1e-6)
        self.bias.copy_(mean.view_as(self.bias))
        self.log_scale.copy_(0.5 * var.log().view_as(self.log_scale))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and not bool(self.initialized):
            self._init(x)
        return (x - self.bias) * torch.exp(-self.log_scale)


@contextlib.contextmanager
def frozen_batch_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalise with the batch but leave their running
    statistics untouched (momentum 0): for forwards that must not change the model, such as a no-gradient view."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in saved:
            m.momentum = mom


def _norm(channels: int, norm: Norm) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "act":
        return ActNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'act' or 'none', got {norm!r}")


def _conv(c_in: int, c_out: int, kernel: int, bias: bool = True) -> nn.Module:
    return weight_norm(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels, norm),
            nn.ReLU(),
            _conv(channels, channels, 3, bias=False),
            _norm(channels, norm),
            nn.ReLU(),
            _conv(channels, channels, 3, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNet(nn.Module):
    """RealNVP's convolutional scale/translate network ``[B, C_in, H, W] -> [B, C_out, H, W]``."""

    def __init__(
        self, in_channels: int, out_channels: int, mid_channels: int = 64, num_blocks: int = 8, norm: Norm = "batch"
    ):
        super().__init__()
        self.in_norm = _norm(in_channels, norm)
        self.in_conv = _conv(2 * in_channels, mid_channels, 3)
        self.in_skip = _conv(mid_channels, mid_channels, 1)
        self.blocks = nn.ModuleList(_ResidualBlock(mid_channels, norm) for _ in range(num_blocks))
        self.skips = nn.ModuleList(_conv(mid_channels, mid_channels, 1) for _ in range(num_blocks))
        self.out_norm = _norm(mid_channels, norm)
        self.out_conv = nn.Conv2d(mid_channels, out_channels, 1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_norm(x)
        x = self.in_conv(torch.relu(torch.cat([x, -x], dim=1)))
        skip = self.in_skip(x)
        for block, skip_conv in zip(self.blocks, self.skips):
            x = block(x)
            skip = skip + skip_conv(x)
        return self.out_conv(torch.relu(self.out_norm(skip)))


class MLP(nn.Module):
    """``depth`` hidden ReLU layers of width ``hidden`` (optional dropout), zero-initialised output layer."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 128, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        out = nn.Linear(width, out_features)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
