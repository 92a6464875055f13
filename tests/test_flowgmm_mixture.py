"""The latent Gaussian mixture, the objectives and variance-scale calibration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from flowgmm import FlowGMM, GaussianMixture, calibration, objectives, vector_flow
from flowgmm.mixture import init_means


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gmm(per_class: bool) -> GaussianMixture:
    gmm = GaussianMixture(
        3, 5, means_scale=1.5, per_class_variance=per_class, class_counts=[1, 2, 5], learn_variance=True, seed=4
    ).double()
    if per_class:
        with torch.no_grad():
            gmm.log_variance.copy_(torch.log(torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64)))
    return gmm


@pytest.mark.parametrize("per_class", [False, True])
def test_densities_match_torch_distributions(per_class: bool) -> None:
    gmm = _gmm(per_class)
    z = torch.randn(50, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    var = gmm.variances().detach()
    covs = torch.stack([v * torch.eye(5, dtype=torch.float64) for v in var])
    comps = MultivariateNormal(gmm.means, covariance_matrix=covs)
    weights = gmm.log_weights.exp().detach()  # float32-initialised buffer, so compare to 1e-7 only here
    torch.testing.assert_close(weights, torch.tensor([1, 2, 5], dtype=torch.float64) / 8, rtol=0, atol=1e-7)
    reference = MixtureSameFamily(Categorical(probs=weights), comps)
    torch.testing.assert_close(gmm.log_prob(z), reference.log_prob(z), rtol=0, atol=1e-10)
    per_comp = comps.log_prob(z.unsqueeze(1))  # [B, K]
    for k in range(3):
        y = torch.full((50,), k)
        torch.testing.assert_close(gmm.log_prob(z, y), per_comp[:, k], rtol=0, atol=1e-10)
    torch.testing.assert_close(gmm.class_logits(z), per_comp + weights.log(), rtol=0, atol=1e-10)
    post = gmm.posterior(z)
    torch.testing.assert_close(post.sum(1), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(post, torch.softmax(per_comp + weights.log(), 1))


def test_mean_initialisation() -> None:
    pair = init_means(2, 8, scale=2.0, seed=1)
    torch.testing.assert_close(pair[1], -pair[0])
    assert math.isclose(pair[0].norm().item(), 2.0 * math.sqrt(8), rel_tol=1e-6)
    many = init_means(10, 2000, scale=0.5, seed=3)
    assert math.isclose(many.std().item(), 0.5, rel_tol=0.05)
    torch.testing.assert_close(init_means(4, 6, seed=7), init_means(4, 6, seed=7))
    assert not torch.equal(init_means(4, 6, seed=7), init_means(4, 6, seed=8))


def test_parameters_are_learnable_only_when_asked() -> None:
    fixed = GaussianMixture(3, 4)
    assert list(fixed.parameters()) == []
    assert {"means", "log_variance", "weight_logits", "variance_scale"} <= set(fixed.state_dict())
    learned = GaussianMixture(3, 4, learn_means=True, learn_variance=True, learn_weights=True)
    assert {n for n, _ in learned.named_parameters()} == {"means", "log_variance", "weight_logits"}
    assert "variance_scale" in dict(learned.named_buffers())


def test_uniform_and_count_weights() -> None:
    torch.testing.assert_close(GaussianMixture(4, 2).log_weights.exp(), torch.full((4,), 0.25))
    torch.testing.assert_close(GaussianMixture(2, 2, class_counts=[3, 1]).log_weights.exp(), torch.tensor([0.75, 0.25]))


def test_variance_scale_applies_to_prediction_only() -> None:
    torch.manual_seed(0)
    model = FlowGMM(vector_flow(dim=3, num_couplings=2, hidden=8), num_classes=2, means_scale=0.5)
    x = torch.randn(20, 3)
    before_lp, before_p = model.log_prob(x), model.predict_proba(x)
    model.set_variance_scale(4.0)
    torch.testing.assert_close(model.log_prob(x), before_lp)  # training density is unscaled
    after_p = model.predict_proba(x)
    assert (after_p.max(1).values <= before_p.max(1).values + 1e-6).all()  # flatter posteriors
    assert not torch.allclose(after_p, before_p)
    torch.testing.assert_close(model.predict_proba(x, calibrated=False), before_p)
    z, _ = model(x)
    torch.testing.assert_close(after_p, model.mixture.posterior(z, calibrated=True))


def test_sampling_statistics() -> None:
    gmm = GaussianMixture(2, 3, means_scale=2.0, variance=0.25)
    gen = torch.Generator().manual_seed(0)
    z, y = gmm.sample(20000, y=1, temperature=2.0, generator=gen)
    assert bool((y == 1).all())
    torch.testing.assert_close(z.mean(0), gmm.means[1], atol=0.05, rtol=0)
    assert math.isclose(z.var(0).mean().item(), 0.25 * 4.0, rel_tol=0.05)
    _, y_any = gmm.sample(10000, generator=gen)
    assert abs(y_any.float().mean().item() - 0.5) < 0.03


def _draw(gmm: GaussianMixture, n: int, true_variance: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, gmm.num_classes, (n,), generator=gen)
    z = gmm.means[y] + math.sqrt(true_variance) * torch.randn(n, gmm.dim, generator=gen)
    return z, y


@pytest.mark.parametrize("true_variance", [0.3, 2.5])
def test_calibration_recovers_the_variance_and_lowers_nll(true_variance: float) -> None:
    gmm = GaussianMixture(4, 6, means_scale=1.0, seed=2)  # model variance 1: over/under-confident
    z_val, y_val = _draw(gmm, 20000, true_variance, seed=0)
    scale = calibration.fit_variance_scale(gmm, z_val, y_val)
    assert abs(scale - true_variance) / true_variance < 0.05, scale
    z_test, y_test = _draw(gmm, 5000, true_variance, seed=1)
    before = F.cross_entropy(gmm.class_logits(z_test), y_test).item()
    gmm.variance_scale.fill_(scale)
    after = F.cross_entropy(gmm.class_logits(z_test, calibrated=True), y_test).item()
    assert after < before
    assert math.isclose(calibration.validation_nll(gmm, z_test, y_test, scale), after, rel_tol=1e-5)


def test_variance_scaling_is_temperature_scaling() -> None:
    gmm = GaussianMixture(3, 4, seed=0).double()
    z = torch.randn(10, 4, dtype=torch.float64)
    logits = gmm.class_logits(z) - gmm.log_weights  # log N_k(z), uniform weights cancel in the softmax
    linear = z @ gmm.means.T - 0.5 * gmm.means.square().sum(1)
    for temperature in (0.5, 3.0):
        gmm.variance_scale.fill_(temperature)
        torch.testing.assert_close(gmm.posterior(z, calibrated=True), torch.softmax(linear / temperature, 1))
    torch.testing.assert_close(torch.softmax(logits, 1), torch.softmax(linear, 1))


# ------------------------------------------------------------------------------------------------ objectives
def _latents() -> tuple[GaussianMixture, torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    gmm = GaussianMixture(3, 4, class_counts=[2, 1, 1]).double()
    z_l, z_u = torch.randn(5, 4, generator=gen).double(), torch.randn(7, 4, generator=gen).double()
    ld_l, ld_u = torch.randn(5, generator=gen).double(), torch.randn(7, generator=gen).double()
    y = torch.tensor([0, 1, 2, 0, 1])
    return gmm, z_l, ld_l, y, z_u, ld_u


def _ref(gmm: GaussianMixture, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    comps = MultivariateNormal(gmm.means, covariance_matrix=torch.eye(4, dtype=torch.float64))
    log_n = comps.log_prob(z.unsqueeze(1))
    return log_n, torch.logsumexp(log_n + gmm.log_weights, 1)


def test_objective_terms_match_their_formulas() -> None:
    gmm, z_l, ld_l, y, z_u, ld_u = _latents()
    log_n_l, log_mix_l = _ref(gmm, z_l)
    log_n_u, log_mix_u = _ref(gmm, z_u)
    joint_l = log_n_l.gather(1, y.view(-1, 1)).squeeze(1) + gmm.log_weights[y]
    lab = -(joint_l + ld_l).mean()
    unl = -(log_mix_u + ld_u).mean()
    ce = -(joint_l - log_mix_l).mean()
    torch.testing.assert_close(objectives.labeled_nll(gmm, z_l, ld_l, y), lab)
    torch.testing.assert_close(objectives.unlabeled_nll(gmm, z_u, ld_u), unl)
    torch.testing.assert_close(objectives.cross_entropy(gmm, z_l, y), ce)
    t = objectives.consistency_targets(gmm, z_u)
    torch.testing.assert_close(t, (log_n_u + gmm.log_weights).argmax(1))
    cons = -(log_n_u.gather(1, t.view(-1, 1)).squeeze(1) + ld_u).mean()
    torch.testing.assert_close(objectives.consistency_nll(gmm, z_u, ld_u, t), cons)

    loss, parts = objectives.semi_supervised_loss(
        gmm, z_l, ld_l, y, z_u, ld_u, form="nll", unlabeled_weight=0.5, consistency_weight=2.0, cons_targets=t
    )
    torch.testing.assert_close(loss, lab + 0.5 * unl + 2.0 * cons)
    assert set(parts) == {"labeled_nll", "unlabeled_nll", "ce", "consistency", "loss"}
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in parts.values())

    loss, parts = objectives.semi_supervised_loss(
        gmm, z_l, ld_l, y, z_u, ld_u, form="ce", label_weight=3.0, unlabeled_weight=0.5
    )
    mix = (-(log_mix_l + ld_l).sum() - 0.5 * (log_mix_u + ld_u).sum()) / 12
    torch.testing.assert_close(loss, 3.0 * ce + mix)

    t_all = objectives.consistency_targets(gmm, torch.cat([z_l, z_u]))
    loss_all, _ = objectives.semi_supervised_loss(
        gmm, z_l, ld_l, y, z_u, ld_u, form="ce", consistency_weight=1.0, cons_targets=t_all
    )
    loss_none, _ = objectives.semi_supervised_loss(gmm, z_l, ld_l, y, z_u, ld_u, form="ce")
    cons_all = objectives.consistency_nll(gmm, torch.cat([z_l, z_u]), torch.cat([ld_l, ld_u]), t_all)
    torch.testing.assert_close(loss_all, loss_none + cons_all)

    loss_lab_only, parts = objectives.semi_supervised_loss(gmm, z_l, ld_l, y, None, None)
    torch.testing.assert_close(loss_lab_only, lab)
    assert parts["unlabeled_nll"].item() == 0.0


def test_ramp_and_bits_per_dim() -> None:
    assert objectives.linear_ramp(0, 100, 3.0) == 0.0
    assert objectives.linear_ramp(25, 100, 3.0) == 0.75
    assert objectives.linear_ramp(100, 100, 3.0) == 3.0
    assert objectives.linear_ramp(1000, 100, 3.0) == 3.0
    assert objectives.linear_ramp(5, 0, 3.0) == 3.0
    # a uniform density on [0, 1]^D is 8 bits per dimension for 8-bit data
    bpd = objectives.bits_per_dim(torch.zeros(3), dim=784)
    torch.testing.assert_close(bpd, torch.full((3,), 8.0))
    lp = torch.tensor([-1000.0])
    torch.testing.assert_close(objectives.bits_per_dim(lp, 10), -(lp - 10 * math.log(256)) / (10 * math.log(2)))


@pytest.mark.parametrize("counts", [None, [5, 20, 40, 10]])
def test_boundary_distance_lands_on_the_boundary(counts) -> None:
    """Stepping the reported distance along the pair's normal reaches equal posteriors of the two top classes;
    unequal class weights move the boundary (so the distance changes), and it is never negative."""
    torch.manual_seed(0)
    gmm = GaussianMixture(4, 6, means_scale=2.0, seed=1, variance=0.7, class_counts=counts)
    z = torch.randn(200, 6, dtype=torch.float64) * 3
    d = gmm.boundary_distance(z)
    assert d.shape == (200,) and (d >= 0).all()
    a, b = gmm.class_logits(z).topk(2, dim=1).indices.T
    normal = gmm.means[b].double() - gmm.means[a].double()
    step = z + d[:, None] * normal / normal.norm(dim=1, keepdim=True)
    logits = gmm.class_logits(step)
    torch.testing.assert_close(logits.gather(1, a[:, None]), logits.gather(1, b[:, None]), rtol=0, atol=1e-6)
    if counts is not None:
        uniform = GaussianMixture(4, 6, means_scale=2.0, seed=1, variance=0.7).boundary_distance(z)
        assert (uniform - d).abs().max() > 1e-3
