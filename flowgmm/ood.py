"""Out-of-domain scores of a FlowGMM, each oriented so that a higher score means more in-domain.

``log p(x)`` alone is dominated by input complexity: a FashionMNIST model gives MNIST digits high likelihood
(Nalisnick et al., ICLR 2019; Kirichenko, Izmailov & Wilson, NeurIPS 2020). Beside it:

- ``latent``: the best class's ``log N(f(x); mu_k, v_k I)``, the density of the latent under its nearest component
  without the flow's log-determinant (the term that rewards smooth, simple inputs);
- ``complexity`` (images): ``L(x) - bits(x)``, the input-complexity correction of Serrà et al. (ICLR 2020) with
  ``L(x)`` the zlib length of the image's grey levels in bits and ``bits(x) = -log2 P(x)`` the model's code length
  for the same discrete image: a simple image (long runs of one level) is cheap for any model and for zlib alike;
- ``max_prob``: the largest class posterior (the baseline every classifier has).

Shifted rows (``shifted_rows``) make out-of-domain sets for tables from the test split itself: every feature's
deviation from its training mean tripled (``scaled``), and every column shuffled on its own (``permuted``: each
feature's marginal intact, the dependencies between them broken).

    >>> import numpy as np
    >>> flat = np.zeros((1, 64), dtype=np.uint8)
    >>> noisy = np.random.default_rng(0).integers(0, 256, size=(1, 64)).astype(np.uint8)
    >>> bool(complexity_bits(flat, 256)[0] < complexity_bits(noisy, 256)[0])
    True
    >>> sorted(shifted_rows(np.arange(12.0).reshape(4, 3), np.zeros(3)))
    ['permuted', 'scaled']
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor

from flowgmm.mixture import GaussianMixture

__all__ = [
    "DEFAULT",
    "RATIO",
    "SCORES",
    "available",
    "complexity_bits",
    "complexity_score",
    "latent_score",
    "model_bits",
    "scores",
    "served",
    "shifted_rows",
]

SCORES = ("log_px", "latent", "complexity", "max_prob")  # complexity: images only
# the served score (``is_ood``) per data kind when the configuration names none, by bench/bench_ood.py (bench/RESULTS.md
# "Out-of-domain"): images, the complexity-corrected score (a FashionMNIST model against MNIST: AUROC 0.999, FPR95
# 0.000, where log p(x) has 0.888 / 0.418; MNIST against FashionMNIST and notMNIST 1.000 with every score); tables,
# log p(x) (the best median AUROC on the suite's shifted rows, tied with the latent score)
DEFAULT = {"image": "complexity", "vector": "log_px"}
RATIO = "llr"  # log p(x) - log p_background(x) (Ren et al., NeurIPS 2019): evaluation only, needs a background model
SCALE_SHIFT = 3.0  # the ``scaled`` set: deviations from the training mean times this


def available(kind: str) -> tuple[str, ...]:
    """The scores a model of this kind (``"image"`` or ``"vector"``) has."""
    return SCORES if kind == "image" else tuple(s for s in SCORES if s != "complexity")


def served(choice: str, kind: str) -> str:
    """The score a model of ``kind`` serves for ``choice`` (a score's name, or ``"auto"``: the kind's default);
    ValueError naming ``eval.ood_score`` when the kind does not have it.

    >>> served("auto", "vector"), served("auto", "image"), served("latent", "image")
    ('log_px', 'complexity', 'latent')
    """
    name = DEFAULT[kind] if choice == "auto" else choice
    if name not in available(kind):
        raise ValueError(f"eval.ood_score={name}: a {kind} model has {', '.join(available(kind))}")
    return name


@torch.no_grad()
def scores(
    names: tuple[str, ...] | list[str],
    mixture: GaussianMixture,
    z: Tensor,
    log_px: Tensor,
    probs: np.ndarray | None = None,
    x: np.ndarray | None = None,
    levels: int | None = None,
    background: Tensor | None = None,
) -> dict[str, np.ndarray]:
    """The named scores of one batch, higher = more in-domain: ``log_px`` (``[N]``), the latents ``z``, the
    calibrated class probabilities ``probs`` (for ``max_prob``), the raw uint8 images ``x`` at ``levels`` (for
    ``complexity``) and a background model's ``log p(x)`` of the same rows (for ``llr``)."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "log_px":
            out[name] = log_px.double().cpu().numpy()
        elif name == "latent":
            out[name] = latent_score(mixture, z)
        elif name == "max_prob" and probs is not None:
            out[name] = np.asarray(probs, dtype=np.float64).max(1)
        elif name == "complexity" and x is not None and levels:
            out[name] = complexity_score(log_px.cpu(), x, levels)
        elif name == RATIO and background is not None:
            out[name] = (log_px.double().cpu() - torch.as_tensor(background).double().cpu()).numpy()
        else:
            raise ValueError(f"OOD score {name!r} needs what was not given (or is not one of {(*SCORES, RATIO)})")
    return out


@torch.no_grad()
def latent_score(mixture: GaussianMixture, z: Tensor) -> np.ndarray:
    """``max_k log N(z; mu_k, v_k I)`` per row (uncalibrated variances), ``[N]``."""
    return mixture.component_log_prob(z).max(1).values.double().cpu().numpy()


def model_bits(log_px: Tensor | np.ndarray, dim: int, levels: int) -> np.ndarray:
    """The model's code length of each discrete image in bits: ``-(log p(x) - D log levels) / log 2`` (the density
    of the image dequantized at the centre of its level bins, as ``bits_per_dim`` counts it)."""
    lp = np.asarray(log_px, dtype=np.float64)
    return -(lp - dim * math.log(levels)) / math.log(2.0)


def complexity_bits(x: np.ndarray, levels: int) -> np.ndarray:
    """zlib (level 9) length in bits of each image's grey-level indices (uint8 rows of 0..255 at ``levels``)."""
    idx = np.rint(np.asarray(x, dtype=np.float64).reshape(len(x), -1) * (levels - 1) / 255.0).astype(np.uint8)
    return np.array([8.0 * len(zlib.compress(row.tobytes(), 9)) for row in idx])


def complexity_score(log_px: Tensor | np.ndarray, x: np.ndarray, levels: int) -> np.ndarray:
    """``L(x) - bits(x)`` per image: higher = more in-domain (Serrà et al.'s ``S(x)``, negated)."""
    dim = int(np.prod(np.asarray(x).shape[1:]))
    return complexity_bits(x, levels) - model_bits(log_px, dim, levels)


def shifted_rows(x: np.ndarray, mean: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Out-of-domain rows made from in-domain ones (``x``: ``[N, D]`` in the table's own units): ``scaled``
    (``mean + 3 (x - mean)``) and ``permuted`` (each column shuffled independently, seeded)."""
    x = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    permuted = np.stack([x[rng.permutation(len(x)), j] for j in range(x.shape[1])], axis=1)
    mean = np.asarray(mean, dtype=np.float32)
    return {"scaled": (mean + SCALE_SHIFT * (x - mean)).astype(np.float32), "permuted": permuted}
