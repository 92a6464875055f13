"""Rational-quadratic spline couplings: the elementwise spline (round trips, exact derivatives, monotonicity, identity
tails), the coupling, the mixing layers between pairs of couplings (fixed permutation, learned LU linear map) and the
spline vector flows (round trips, log-dets against autograd Jacobians, identity at initialisation, float32 log-dets
under bf16 autocast), training, and the model spec."""

from __future__ import annotations

import doctest
from typing import Callable

import pytest
import torch
from conftest import perturb
from torch import nn

import flowgmm.linear
import flowgmm.permutation
import flowgmm.splines
from flowgmm import FlowGMM, objectives, vector_flow
from flowgmm.bijections import Bijection
from flowgmm.coupling import AffineCoupling, half_mask
from flowgmm.flows import image_vector_flow
from flowgmm.linear import LULinear
from flowgmm.permutation import Permutation
from flowgmm.spec import build_model, load, save
from flowgmm.splines import RQSplineCoupling, params_per_coordinate, rq_spline, spline_knots

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    return perturb(module, std, seed)


def _spline_case(bins: int, n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 points ``N(0, 3^2)`` (many beyond a bound of 2.5) and random raw parameters of scale 2."""
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, generator=gen, dtype=torch.float64)
    params = 2 * torch.randn(n, params_per_coordinate(bins), generator=gen, dtype=torch.float64)
    return x, params


# ---- the elementwise spline ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [2, 3, 8, 16])
def test_spline_round_trips_both_ways_inside_and_outside_the_bound(bins: int) -> None:
    x, params = _spline_case(bins)
    bound = 2.5
    outside = x.abs() > bound
    assert 0 < int(outside.sum()) < len(x)  # both regimes are exercised
    y, _ = rq_spline(x, params, bound)
    x_back, _ = rq_spline(y, params, bound, inverse=True)
    assert (x_back - x).abs().max() < 1e-10
    assert torch.equal(y[outside], x[outside])  # identity tails
    assert not torch.allclose(y[~outside], x[~outside])
    x_from_y, _ = rq_spline(x, params, bound, inverse=True)  # the other direction: inverse first
    assert (rq_spline(x_from_y, params, bound)[0] - x).abs().max() < 1e-10


@pytest.mark.parametrize("bins", [2, 3, 8])
def test_spline_log_derivative_is_exact(bins: int) -> None:
    x, params = _spline_case(bins, seed=1)
    bound = 2.5
    x = x.requires_grad_(True)
    y, logabsdet = rq_spline(x, params, bound)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)  # elementwise map: the Jacobian is diagonal
    assert torch.allclose(logabsdet, dy_dx.log(), atol=1e-10, rtol=0)
    _, inverse_logabsdet = rq_spline(y.detach(), params, bound, inverse=True)
    assert torch.allclose(inverse_logabsdet, -logabsdet.detach(), atol=1e-9, rtol=0)


def test_spline_is_monotone_continuous_and_meets_the_tails_with_slope_one() -> None:
    bins, bound = 8, 3.0
    gen = torch.Generator().manual_seed(2)
    params = 3 * torch.randn(params_per_coordinate(bins), generator=gen, dtype=torch.float64)
    grid = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    y, logabsdet = rq_spline(grid, params.expand(len(grid), -1), bound)
    assert bool((y.diff() > 0).all())
    assert (y.diff()).max() < 1e-2  # no jumps, also not at the knots or at +-bound
    knots = spline_knots(params, bound)
    y_knots, logabsdet_knots = rq_spline(knots.x, params.expand(bins + 1, -1), bound)
    assert torch.allclose(y_knots, knots.y, atol=1e-12)  # interpolates the knots
    assert torch.allclose(logabsdet_knots, knots.d.log(), atol=1e-10)  # with the knot derivatives
    assert abs(logabsdet_knots[0].item()) < 1e-10 and abs(logabsdet_knots[-1].item()) < 1e-10  # slope 1 at +-B


def test_spline_minimum_bin_and_derivative_keep_extreme_parameters_finite_and_invertible() -> None:
    bins = 8
    params = torch.zeros(6, params_per_coordinate(bins), dtype=torch.float64)
    params[:, 0] = 60.0  # one bin takes (almost) the whole width
    params[:, bins + 3] = -60.0
    params[:, 2 * bins :] = -60.0  # derivatives at their minimum
    x = torch.tensor([-2.9, -1.0, -1e-3, 0.5, 2.0, 2.99], dtype=torch.float64)
    y, logabsdet = rq_spline(x, params, 3.0)
    assert bool(torch.isfinite(y).all() and torch.isfinite(logabsdet).all())
    assert (rq_spline(y, params, 3.0, inverse=True)[0] - x).abs().max() < 1e-8


def test_spline_zero_parameters_are_the_identity() -> None:
    x = torch.linspace(-5, 5, 101)
    y, logabsdet = rq_spline(x, torch.zeros(101, params_per_coordinate(8)), 4.0)
    assert torch.allclose(y, x, atol=1e-6, rtol=0) and logabsdet.abs().max() < 1e-6
    knots = spline_knots(torch.zeros(params_per_coordinate(8)), 4.0)
    assert torch.allclose(knots.d, torch.ones(9), atol=1e-7, rtol=0)  # softplus offset: exactly 1 up to rounding


def test_spline_rejects_a_wrong_parameter_count_and_couplings_too_few_bins() -> None:
    with pytest.raises(ValueError, match="3K - 1"):
        rq_spline(torch.zeros(3), torch.zeros(3, 7), 3.0)
    with pytest.raises(ValueError, match="bins >= 2"):
        RQSplineCoupling(half_mask(4, 0), bins=1)
    with pytest.raises(ValueError, match="tail_bound > 0"):
        RQSplineCoupling(half_mask(4, 0), tail_bound=0.0)


# ---- couplings and flows -----------------------------------------------------------------------------------------

# name -> (builder, input shape, input kind): "real" inputs are N(0, 2^2) (some beyond the tail bound), "unit" (0, 1)
CASES: dict[str, tuple[Callable[[], Bijection], tuple[int, ...], str]] = {
    "coupling-2": (lambda: RQSplineCoupling(half_mask(2, 0), bins=4, tail_bound=2.0, hidden=16), (2,), "real"),
    "coupling-5-odd": (lambda: RQSplineCoupling(half_mask(5, 1), bins=8, tail_bound=3.0, hidden=16), (5,), "real"),
    "coupling-interleaved": (
        lambda: RQSplineCoupling(torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]), bins=5, tail_bound=3.0, hidden=16),
        (6,),
        "real",
    ),
    "permutation": (lambda: Permutation(torch.tensor([3, 0, 4, 1, 2])), (5,), "real"),
    "lu-linear": (lambda: LULinear(5, seed=3), (5,), "real"),
    "vector-flow-spline-3": (
        lambda: vector_flow(dim=3, num_couplings=4, hidden=16, coupling="spline", bins=6, tail_bound=3.0),
        (3,),
        "real",
    ),
    "vector-flow-spline-6-standardized": (
        lambda: vector_flow(
            dim=6,
            num_couplings=4,
            hidden=16,
            standardize=(torch.linspace(-1, 1, 6), torch.linspace(0.5, 2, 6)),
            coupling="spline",
            tail_bound=2.5,
        ),
        (6,),
        "real",
    ),
    "vector-flow-spline-5-no-mixing": (
        lambda: vector_flow(dim=5, num_couplings=4, hidden=16, coupling="spline", mixing="none"),
        (5,),
        "real",
    ),
    "vector-flow-spline-5-lu": (
        lambda: vector_flow(dim=5, num_couplings=4, hidden=16, coupling="spline", mixing="lu"),
        (5,),
        "real",
    ),
    "vector-flow-affine-4-permute": (
        lambda: vector_flow(dim=4, num_couplings=4, hidden=16, mixing="permute"),
        (4,),
        "real",
    ),
    "image-vector-flow-spline": (
        lambda: image_vector_flow(channels=1, size=2, num_couplings=2, hidden=16, coupling="spline", bins=4),
        (1, 2, 2),
        "unit",
    ),
}


def _make(name: str, batch: int = 4) -> tuple[Bijection, torch.Tensor]:
    builder, shape, kind = CASES[name]
    torch.manual_seed(0)
    bij = _perturb(builder()).double().eval()
    gen = torch.Generator().manual_seed(1)
    if kind == "unit":
        x = torch.rand(batch, *shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    else:
        x = 2 * torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    return bij, x


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_float64(name: str) -> None:
    bij, x = _make(name, batch=16)
    with torch.no_grad():
        z, logdet = bij(x)
        x_back = bij.inverse(z)
        z_back, _ = bij(bij.inverse(x if x.dim() == 2 else x.flatten(1)))
    assert z.dtype == logdet.dtype == x_back.dtype == torch.float64
    assert logdet.shape == (x.shape[0],) and x_back.shape == x.shape
    assert (x_back - x).abs().max() < 1e-10
    assert (z_back - (x if x.dim() == 2 else x.flatten(1))).abs().max() < 1e-10
    assert not torch.allclose(z, x.flatten(1))


@pytest.mark.parametrize("name", list(CASES))
def test_logdet_matches_autograd_jacobian(name: str) -> None:
    bij, x = _make(name, batch=3)
    _, logdet = bij(x)
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: bij(v.unsqueeze(0))[0].flatten(), x[b], vectorize=True)
        jac = jac.reshape(jac.shape[0], -1)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign.item() != 0.0
        assert abs(logdet[b].item() - expected.item()) < 1e-8, (logdet[b].item(), expected.item())


def test_coupling_changes_only_unmasked_coordinates_and_starts_at_identity() -> None:
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    layer = RQSplineCoupling(mask, bins=8, tail_bound=3.0, hidden=16)
    x = 2 * torch.randn(64, 4)
    z, logdet = layer(x)
    assert torch.allclose(z, x, atol=1e-5, rtol=0) and logdet.abs().max() < 1e-5  # zero-initialised last layer
    assert torch.equal(layer.inverse(x)[:, [0, 2]], x[:, [0, 2]])
    _perturb(layer)
    z, _ = layer(x)
    assert torch.equal(z[:, [0, 2]], x[:, [0, 2]])
    inside = x[:, [1, 3]].abs() < 3.0
    assert not torch.allclose(z[:, [1, 3]][inside], x[:, [1, 3]][inside])
    assert torch.equal(z[:, [1, 3]][~inside], x[:, [1, 3]][~inside])  # identity tails
    assert set(layer.state_dict()) == {"mask"} | {f"net.{k}" for k in layer.net.state_dict()}


def _kinds(flow: Bijection) -> str:
    names = {RQSplineCoupling: "S", AffineCoupling: "A", Permutation: "P", LULinear: "L"}
    return "".join(names.get(type(layer), "?") for layer in flow.layers)


def test_spline_vector_flow_layout_and_identity_at_init() -> None:
    flow = vector_flow(dim=5, num_couplings=6, hidden=8, coupling="spline")
    # alternating half masks; a mixing layer (default: learned LU) before every pair, each pair changes every
    # coordinate once
    assert _kinds(flow) == "LSSLSSLSS"
    couplings = [layer for layer in flow.layers if isinstance(layer, RQSplineCoupling)]
    for i, layer in enumerate(couplings):
        assert torch.equal(layer.mask, half_mask(5, i % 2))
    orders = [layer.order for layer in flow.layers if isinstance(layer, LULinear)]
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[1], vector_flow(dim=5, num_couplings=6, hidden=8, coupling="spline").layers[3].order)
    x = torch.randn(32, 5)
    z, logdet = flow(x)  # LU layers start as their permutation, couplings as the identity
    assert torch.allclose(z, x[:, orders[0]][:, orders[1]][:, orders[2]], atol=1e-5, rtol=0)
    assert logdet.abs().max() < 1e-5
    plain = vector_flow(dim=5, num_couplings=4, coupling="spline", mixing="none")
    assert _kinds(plain) == "SSSS"
    z, logdet = plain(x)
    assert torch.allclose(z, x, atol=1e-5, rtol=0) and logdet.abs().max() < 1e-5  # zero-initialised: the identity
    permuted = vector_flow(dim=5, num_couplings=4, coupling="spline", mixing="permute")
    assert _kinds(permuted) == "PSSPSS"
    z, _ = permuted(x)
    assert torch.allclose(z, x[:, permuted.layers[0].order][:, permuted.layers[3].order], atol=1e-5, rtol=0)
    assert _kinds(vector_flow(dim=5, num_couplings=4)) == "AAAA"  # affine: the architecture of old specs
    assert _kinds(vector_flow(dim=5, num_couplings=4, mixing="permute")) == "PAAPAA"
    with pytest.raises(ValueError, match="coupling must be one of"):
        vector_flow(dim=5, coupling="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mixing must be one of"):
        vector_flow(dim=5, mixing="shuffle")  # type: ignore[arg-type]


def test_lu_linear_runs_in_float32_under_autocast_and_learns() -> None:
    torch.manual_seed(0)
    layer = _perturb(LULinear(6, seed=1), std=0.3)
    x = torch.randn(16, 6)
    z32, logdet32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16, logdet16 = layer(x)
        x_back = layer.inverse(z16)
    assert z16.dtype == logdet16.dtype == x_back.dtype == torch.float32
    assert torch.equal(z16, z32) and torch.equal(logdet16, logdet32)  # no bf16 rounding of the flow's values
    assert (x_back - x).abs().max() < 1e-5
    (z32.square().sum() - logdet32.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_logdet_is_float32_for_float32_input_and_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    flow = _perturb(vector_flow(dim=6, num_couplings=4, hidden=32, coupling="spline", tail_bound=3.0)).eval()
    x = 2 * torch.randn(64, 6)
    with torch.no_grad():
        z32, logdet32 = flow(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z16, logdet16 = flow(x)
            x_back = flow.inverse(z16)
    assert logdet32.dtype == torch.float32 and z32.dtype == torch.float32
    assert logdet16.dtype == torch.float32 and z16.dtype == torch.float32 and x_back.dtype == torch.float32
    # the conditioners run in bf16 (about 3 significant digits), so the results differ by their rounding only
    assert (logdet16 - logdet32).abs().max() < 0.05 * (1 + logdet32.abs().max())
    assert (z16 - z32).abs().max() < 0.05
    assert (x_back - x).abs().max() < 1e-4  # the inverse under the same autocast undoes the bf16 forward


def test_spline_math_runs_in_float32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    layer = _perturb(RQSplineCoupling(half_mask(6, 0), bins=8, tail_bound=3.0, hidden=32)).eval()
    x = 2 * torch.randn(64, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = layer(x)
        params = layer.net(x[:, :3])
    assert params.dtype == torch.bfloat16  # the conditioner did run in bf16
    with torch.no_grad():  # the same bf16 parameters through the spline in float32, outside autocast
        y, logabsdet = rq_spline(x[:, 3:], params.float().reshape(64, 3, params_per_coordinate(8)), 3.0)
    assert torch.allclose(z[:, 3:], y, atol=1e-6, rtol=0) and torch.allclose(logdet, logabsdet.sum(1), atol=1e-5)
    assert not torch.allclose(y, x[:, 3:], atol=1e-3)


def test_flowgmm_with_spline_flow_trains_without_non_finite_values() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(256) % 2
    x = torch.randn(256, 4, generator=gen) * 0.5 + 2.0 * (2 * y[:, None] - 1)  # two blobs, some beyond the bound
    flow = vector_flow(dim=4, num_couplings=4, hidden=32, coupling="spline", tail_bound=3.0)
    model = FlowGMM(flow, num_classes=2, learn_means=True).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        z, logdet = model(x)
        loss, _ = objectives.semi_supervised_loss(model.mixture, z[:64], logdet[:64], y[:64], z[64:], logdet[64:])
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    grads = [name for name, p in model.flow.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not grads, f"no gradient for {grads}"
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x)).all()
        assert (model.flow.inverse(model(x)[0]) - x).abs().max() < 1e-4


def test_spec_round_trip_and_old_specs_build_affine(tmp_path) -> None:
    model_keys = {"num_couplings": 2, "hidden": 8, "coupling": "spline", "bins": 5, "tail_bound": 3.5}
    spec = {"kind": "vector", "shape": [3], "num_classes": 2, "model": model_keys, "feature_mean": [0.0, 1.0, 2.0]}
    spec["feature_std"] = [1.0, 2.0, 0.5]
    model = _perturb(build_model(spec)).eval()
    couplings = [layer for layer in model.flow.layers if isinstance(layer, RQSplineCoupling)]
    assert len(couplings) == 2 and all(c.bins == 5 and c.tail_bound == 3.5 for c in couplings)
    save(model, spec, tmp_path / "m")
    loaded, loaded_spec = load(tmp_path / "m")
    assert loaded_spec == spec
    x = torch.randn(7, 3) * 2 + torch.tensor([0.0, 1.0, 2.0])
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x), model.log_prob(x))
    old = build_model({"kind": "vector", "shape": [3], "num_classes": 2, "model": {"num_couplings": 2, "hidden": 8}})
    assert all(isinstance(layer, AffineCoupling) for layer in old.flow.layers)
    assert set(old.flow.state_dict()) == set(vector_flow(3, 2, 8).state_dict())  # old weights still load
    assert _kinds(model.flow) == "?LSS"  # the standardization, then the spline default: an LU layer per pair
    for mixing, kinds in [("none", "?SS"), (None, "?LSS"), ("permute", "?PSS"), ("lu", "?LSS")]:
        assert _kinds(build_model(dict(spec, model=dict(model_keys, mixing=mixing))).flow) == kinds
    permute_spec = dict(spec, model=dict(model_keys, mixing="permute"))
    permute_model = _perturb(build_model(permute_spec)).eval()
    save(permute_model, permute_spec, tmp_path / "permute")
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "permute")[0].log_prob(x), permute_model.log_prob(x))
    image = {"kind": "image", "shape": [1, 4, 4], "num_classes": 2, "model": dict(model_keys, flow="vector")}
    assert any(isinstance(layer, RQSplineCoupling) for layer in build_model(image).flow.layers)


def test_permutation_rejects_a_non_permutation() -> None:
    with pytest.raises(ValueError, match="permutation of 0..D-1"):
        Permutation(torch.tensor([0, 0, 2]))


@pytest.mark.parametrize("module", [flowgmm.splines, flowgmm.permutation, flowgmm.linear])
def test_docstring_examples_run(module) -> None:
    torch.manual_seed(0)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
