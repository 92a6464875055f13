"""Quantization is a property of the data: dequantization at the data's own grey levels, and bits/dim against a
discrete distribution whose entropy is known."""

from __future__ import annotations

import math

import numpy as np
import torch

from flowgmm import dequantize
from pipeline.train.validate import bits_per_dim


def test_dequantize_recovers_each_level_from_its_uint8_code():
    levels = 17  # digits: 0..16 stored on the uint8 scale as round(255 q / 16)
    q = torch.arange(levels, dtype=torch.float32)
    x01 = torch.round(255 * q / (levels - 1)) / 255
    mid = dequantize(x01[None], noise="mid", levels=levels)[0]
    torch.testing.assert_close(mid, (q + 0.5) / levels)
    noisy = dequantize(x01.repeat(1000, 1), noise="uniform", levels=levels)
    assert torch.equal(torch.floor(noisy * levels), q.expand_as(noisy))  # every draw stays in its level's cell


def test_bits_per_dim_equals_the_entropy_of_a_known_discrete_distribution():
    """Pixels drawn independently from a pmf over 17 levels; the density that is constant on each level's cell,
    ``p(x) = prod_d L * P(q_d)``, is the best a flow can do, and its bits/dim must equal the pmf's entropy."""
    levels, dim, n = 17, 64, 4000
    rng = np.random.default_rng(0)
    pmf = rng.dirichlet(np.ones(levels))
    entropy_bits = float(-(pmf * np.log2(pmf)).sum())
    q = rng.choice(levels, size=(n, dim), p=pmf)
    stored = torch.as_tensor(np.round(255 * q / (levels - 1)) / 255, dtype=torch.float32)
    x = dequantize(stored, noise="uniform", generator=torch.Generator().manual_seed(0), levels=levels)
    cell = torch.floor(x * levels).long()
    log_px = torch.log(levels * torch.as_tensor(pmf, dtype=torch.float64)[cell]).sum(1)
    bpd = bits_per_dim(log_px, dim, levels)
    stderr = float(np.std(-np.log2(pmf[q]).mean(1))) / math.sqrt(n)
    assert abs(bpd - entropy_bits) < 4 * stderr + 1e-9, (bpd, entropy_bits)
    # the same density judged at 256 levels would claim log2(256/17) more bits per dimension
    assert abs(bits_per_dim(log_px, dim, 256) - bpd - math.log2(256 / levels)) < 1e-9


def test_sources_declare_their_levels(tmp_path):
    from pipeline.config import resolve
    from pipeline.data import prepare

    digits = prepare(resolve("digits", smoke=True).data, tmp_path)
    assert digits.levels == 17 and digits.manifest["levels"] == 17
    moons = prepare(resolve("moons", smoke=True).data, tmp_path)
    assert moons.levels is None  # vectors are continuous: no dequantization
