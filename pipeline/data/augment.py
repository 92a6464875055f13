"""Augmentation on whole batches in torch, on the training device: random integer translation for images, Gaussian
jitter for vectors. Seeded through the ``torch.Generator`` passed in.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> translate_images(torch.rand(4, 1, 8, 8), 1, g).shape
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

import torch


def translate_images(x: torch.Tensor, max_shift: int, gen: torch.Generator, pad_mode: str = "reflect") -> torch.Tensor:
    """Random integer translation by up to ``max_shift`` pixels in each direction, per image. x: [B,C,H,W]."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    t = int(max_shift)
    mode = "reflect" if pad_mode == "reflect" and t < min(h, w) else "constant"
    xp = torch.nn.functional.pad(x, (t, t, t, t), mode=mode)
    dy = torch.randint(0, 2 * t + 1, (b,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * t + 1, (b,), generator=gen, device=gen.device).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None]  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None]  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def jitter_vectors(x: torch.Tensor, scale: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
    return x + noise * scale
