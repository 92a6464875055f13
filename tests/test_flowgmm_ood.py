"""Out-of-domain scores (``flowgmm.ood``): the latent score against a reference density, the code lengths against
``bits_per_dim``, the complexity correction on a case where raw likelihood ranks by complexity, and the shifted
rows' construction."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from flowgmm import metrics, ood
from flowgmm.mixture import GaussianMixture
from pipeline.train.validate import bits_per_dim


def test_latent_score_is_the_best_components_isotropic_gaussian_log_density() -> None:
    gmm = GaussianMixture(3, 5, seed=0)
    z = torch.randn(40, 5, generator=torch.Generator().manual_seed(1)) * 2.0
    ref = torch.stack(
        [
            torch.distributions.MultivariateNormal(gmm.means[k], torch.eye(5) * gmm.variances()[k]).log_prob(z)
            for k in range(3)
        ],
        dim=1,
    )
    np.testing.assert_allclose(ood.latent_score(gmm, z), ref.max(1).values.numpy(), rtol=1e-5, atol=1e-4)


def test_model_bits_are_the_code_length_bits_per_dim_averages() -> None:
    log_px = torch.tensor([-50.0, -80.0, 10.0])
    dim, levels = 64, 17
    bits = ood.model_bits(log_px, dim, levels)
    assert bits.mean() / dim == pytest.approx(bits_per_dim(log_px, dim, levels))
    assert bits[1] - bits[0] == pytest.approx(30.0 / math.log(2.0))  # 30 nats less likely = 43.3 bits longer


def test_complexity_bits_are_zlib_lengths_of_the_grey_level_indices() -> None:
    x = np.random.default_rng(0).integers(0, 17, size=(5, 64)).astype(np.uint8) * 255 // 16  # digits' 17 levels
    expected = [8 * len(zlib.compress(np.rint(r * 16 / 255).astype(np.uint8).tobytes(), 9)) for r in x]
    np.testing.assert_array_equal(ood.complexity_bits(x, 17), expected)


def test_complexity_score_separates_what_raw_likelihood_ranks_by_complexity() -> None:
    # in-domain images are busy, out-of-domain ones flat (MNIST under a FashionMNIST model, in miniature): a model
    # whose code length follows the input's complexity gives the flat OOD images the higher log p(x); the
    # correction scores the code length against the compressor's and ranks them below every in-domain image
    rng = np.random.default_rng(0)
    busy = rng.integers(0, 256, size=(200, 64)).astype(np.uint8)
    flat = np.repeat(rng.integers(0, 256, size=(200, 1)), 64, axis=1).astype(np.uint8)
    flat[:, :8] = rng.integers(0, 256, size=(200, 8))  # a little structure, as in a digit
    levels, dim = 256, 64

    def log_px(x: np.ndarray, extra_bits: float) -> np.ndarray:  # code length = zlib's + a per-domain extra
        bits = ood.complexity_bits(x, levels) + extra_bits
        return dim * math.log(levels) - bits * math.log(2.0)

    lp_in, lp_out = log_px(busy, -20.0), log_px(flat, +20.0)
    assert metrics.auroc(lp_in, lp_out) < 0.1  # log p(x) prefers the simple out-of-domain images
    s_in, s_out = ood.complexity_score(lp_in, busy, levels), ood.complexity_score(lp_out, flat, levels)
    assert metrics.auroc(s_in, s_out) == pytest.approx(1.0)
    np.testing.assert_allclose(s_in, 20.0)


def test_shifted_rows_keep_each_columns_values_and_scale_the_deviations() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, size=(100, 4)).astype(np.float32)
    mean = x.mean(0)
    shifted = ood.shifted_rows(x, mean, seed=0)
    for j in range(4):
        np.testing.assert_array_equal(np.sort(shifted["permuted"][:, j]), np.sort(x[:, j]))
    assert not np.array_equal(shifted["permuted"], x)
    np.testing.assert_allclose(shifted["scaled"] - mean, ood.SCALE_SHIFT * (x - mean), rtol=1e-5, atol=1e-4)
    again = ood.shifted_rows(x, mean, seed=0)
    np.testing.assert_array_equal(again["permuted"], shifted["permuted"])  # seeded
