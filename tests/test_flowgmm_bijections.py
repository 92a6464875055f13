"""Exactness of every bijection and both flows: round trips, log-dets against autograd Jacobians, gradients."""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

import pytest
import torch
from conftest import perturb
from torch import nn

from flowgmm import FlowGMM, dequantize, image_flow, objectives, vector_flow
from flowgmm.bijections import Affine, Bijection, Flatten, Sequential
from flowgmm.coupling import AffineCoupling, channel_mask, checkerboard_mask, half_mask
from flowgmm.nets import MLP, ResNet
from flowgmm.preprocess import Logit
from flowgmm.reshape import FactorOut, Squeeze

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(module: nn.Module, std: float = 0.2, seed: int = 0) -> nn.Module:
    return perturb(module, std, seed)


def _coupling_image(mask: torch.Tensor) -> AffineCoupling:
    c = mask.shape[0]
    return AffineCoupling(mask, ResNet(c, 2 * c, mid_channels=8, num_blocks=1, norm="batch"))


# name -> (builder, input shape, input kind): "real" inputs are N(0, 1); "unit" inputs lie in (0, 1)
CASES: dict[str, tuple[Callable[[], Bijection], tuple[int, ...], str]] = {
    "coupling-checkerboard-0": (lambda: _coupling_image(checkerboard_mask(1, 4, 4, 0)), (1, 4, 4), "real"),
    "coupling-checkerboard-1": (lambda: _coupling_image(checkerboard_mask(2, 4, 4, 1)), (2, 4, 4), "real"),
    "coupling-channel-0": (lambda: _coupling_image(channel_mask(2, 4, 4, 0)), (2, 4, 4), "real"),
    "coupling-channel-1": (lambda: _coupling_image(channel_mask(4, 2, 2, 1)), (4, 2, 2), "real"),
    "coupling-half-2": (lambda: AffineCoupling(half_mask(2, 0), MLP(2, 4, hidden=16)), (2,), "real"),
    "coupling-half-6": (lambda: AffineCoupling(half_mask(6, 1), MLP(6, 12, hidden=16)), (6,), "real"),
    "coupling-half-5-odd": (lambda: AffineCoupling(half_mask(5, 0), MLP(5, 10, hidden=16)), (5,), "real"),
    "squeeze-1x4x4": (lambda: Squeeze(), (1, 4, 4), "real"),
    "squeeze-2x4x4": (lambda: Squeeze(), (2, 4, 4), "real"),
    "factor-out": (
        lambda: FactorOut(
            (4, 2, 2), keep=2, inner=Sequential(_coupling_image(checkerboard_mask(2, 2, 2, 0)), Flatten((2, 2, 2)))
        ),
        (4, 2, 2),
        "real",
    ),
    "multiscale-squeeze-factor": (
        lambda: Sequential(Squeeze(), FactorOut((4, 2, 2), keep=2, inner=Flatten((2, 2, 2)))),
        (1, 4, 4),
        "real",
    ),
    "logit": (lambda: Logit(alpha=0.05), (2, 4, 4), "unit"),
    "affine": (lambda: Affine(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.3, 1.5])), (3,), "real"),
    "image-flow-1x4x4": (lambda: image_flow(channels=1, size=4, mid_channels=8, num_blocks=1), (1, 4, 4), "unit"),
    "image-flow-2x4x4": (lambda: image_flow(channels=2, size=4, mid_channels=8, num_blocks=1), (2, 4, 4), "unit"),
    "image-flow-1x8x8-3-scales": (
        lambda: image_flow(channels=1, size=8, num_scales=3, mid_channels=4, num_blocks=1),
        (1, 8, 8),
        "unit",
    ),
    "image-flow-1x4x4-no-norm": (
        lambda: image_flow(channels=1, size=4, mid_channels=8, num_blocks=1, norm="none"),
        (1, 4, 4),
        "unit",
    ),
    "vector-flow-2": (lambda: vector_flow(dim=2, num_couplings=4, hidden=16), (2,), "real"),
    "vector-flow-6-standardized": (
        lambda: vector_flow(
            dim=6, num_couplings=4, hidden=16, standardize=(torch.linspace(-1, 1, 6), torch.linspace(0.5, 2, 6))
        ),
        (6,),
        "real",
    ),
}


def _make(name: str, batch: int = 3) -> tuple[Bijection, torch.Tensor]:
    builder, shape, kind = CASES[name]
    torch.manual_seed(0)
    bij = _perturb(builder()).double().eval()
    gen = torch.Generator().manual_seed(1)
    if kind == "unit":
        x = torch.rand(batch, *shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    else:
        x = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    return bij, x


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_float64(name: str) -> None:
    bij, x = _make(name)
    with torch.no_grad():
        z, logdet = bij(x)
        x_back = bij.inverse(z)
    assert z.dtype == logdet.dtype == x_back.dtype == torch.float64
    assert logdet.shape == (x.shape[0],)
    assert x_back.shape == x.shape
    rel = (x_back - x).norm() / x.norm()
    assert rel < 1e-10, f"relative round-trip error {rel:.3e}"
    assert not torch.allclose(z.flatten(1), x.flatten(1)) or name.startswith(("squeeze", "multiscale"))


@pytest.mark.parametrize("name", list(CASES))
def test_logdet_matches_autograd_jacobian(name: str) -> None:
    bij, x = _make(name, batch=2)
    _, logdet = bij(x)
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: bij(v.unsqueeze(0))[0].flatten(), x[b], vectorize=True)
        jac = jac.reshape(jac.shape[0], -1)
        assert jac.shape[0] == jac.shape[1]
        _, expected = torch.linalg.slogdet(jac)
        assert abs(logdet[b].item() - expected.item()) < 1e-6, (logdet[b].item(), expected.item())


def test_couplings_change_only_unmasked_positions_and_start_at_identity() -> None:
    mask = checkerboard_mask(1, 4, 4, 0)
    layer = _coupling_image(mask)
    x = torch.randn(2, 1, 4, 4)
    z, logdet = layer(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(2))  # zero-initialised last layer
    _perturb(layer)
    z, _ = layer.eval()(x)
    kept = mask.bool().expand_as(x)
    assert torch.equal(z[kept], x[kept])
    assert not torch.allclose(z[~kept], x[~kept])


def test_vector_flow_changes_both_coordinates_in_2d() -> None:
    flow = vector_flow(dim=2, num_couplings=2, hidden=8)
    masks = [layer.mask for layer in flow.layers if isinstance(layer, AffineCoupling)]
    assert torch.equal(masks[0], torch.tensor([1.0, 0.0])) and torch.equal(masks[1], torch.tensor([0.0, 1.0]))


def test_log_scale_is_bounded() -> None:
    layer = AffineCoupling(half_mask(2, 0), MLP(2, 4, hidden=8))
    with torch.no_grad():
        layer.net.net[-1].bias.fill_(100.0)  # huge raw log-scale
    _, logdet = layer(torch.randn(4, 2))
    assert torch.allclose(logdet, torch.full((4,), torch.tanh(torch.tensor(100.0)).item()))


def test_image_flow_shapes_and_first_layer() -> None:
    for channels, size in [(1, 8), (1, 28), (3, 32)]:
        flow = image_flow(channels=channels, size=size, mid_channels=4, num_blocks=1)
        assert isinstance(flow.layers[0], Logit) and flow.layers[0].alpha == 0.05
        assert flow.dim == channels * size * size and flow.input_shape == (channels, size, size)
        x = torch.rand(2, channels, size, size)
        with torch.no_grad():
            z, logdet = flow.eval()(x)
            assert z.shape == (2, flow.dim) and logdet.shape == (2,)
            assert flow.inverse(z).shape == x.shape
    couplings = [m for m in image_flow(channels=3, size=32).modules() if isinstance(m, AffineCoupling)]
    assert len(couplings) == 10  # 3 checkerboard + 3 channel-wise + 4 checkerboard


def test_affine_parameters_are_buffers() -> None:
    flow = vector_flow(dim=3, standardize=(torch.zeros(3), torch.ones(3)))
    assert isinstance(flow.layers[0], Affine)
    names = {n for n, _ in flow.named_parameters()}
    assert not any(n.startswith("layers.0.") for n in names)
    assert "layers.0.mean" in flow.state_dict() and "layers.0.std" in flow.state_dict()


def test_dequantize() -> None:
    x01 = torch.tensor([[0.0, 128 / 255, 1.0]])
    assert torch.allclose(dequantize(x01, "mid"), (255 * x01 + 0.5) / 256)
    gen = torch.Generator().manual_seed(0)
    noisy = dequantize(x01.expand(1000, 3), "uniform", generator=gen)
    k = 255 * x01
    assert bool(((noisy * 256 >= k) & (noisy * 256 < k + 1)).all())
    assert torch.equal(dequantize(x01, "mid"), dequantize(x01, "mid"))
    with pytest.raises(ValueError):
        dequantize(x01, "gaussian")


def _models() -> dict[str, FlowGMM]:
    torch.manual_seed(0)
    return {
        "image": FlowGMM(
            image_flow(channels=1, size=4, mid_channels=8, num_blocks=1),
            num_classes=3,
            learn_means=True,
            learn_variance=True,
            learn_weights=True,
            per_class_variance=True,
        ),
        "vector": FlowGMM(
            vector_flow(dim=4, num_couplings=4, hidden=16),
            num_classes=3,
            learn_means=True,
            learn_variance=True,
            learn_weights=True,
        ),
    }


def _batch(model: FlowGMM, n: int = 8) -> torch.Tensor:
    shape = model.flow.input_shape
    gen = torch.Generator().manual_seed(3)
    if len(shape) == 3:
        return torch.rand(n, *shape, generator=gen) * 0.98 + 0.01
    return torch.randn(n, *shape, generator=gen)


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_every_parameter_gets_a_gradient_after_one_step(kind: str) -> None:
    model = _models()[kind].train()
    x = _batch(model)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        z, logdet = model(x)
        loss, _ = objectives.semi_supervised_loss(model.mixture, z[:4], logdet[:4], y[:4], z[4:], logdet[4:])
        return loss

    opt.zero_grad()
    loss_fn().backward()
    opt.step()
    opt.zero_grad()
    loss_fn().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_log_prob_train_and_eval_agree_without_batchnorm(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "image":
        flow = image_flow(channels=1, size=4, mid_channels=8, num_blocks=1, norm="none")
    else:
        flow = vector_flow(dim=4, num_couplings=4, hidden=16)
    model = FlowGMM(_perturb(flow), num_classes=2)
    x = _batch(model)
    with torch.no_grad():
        train_lp = model.train().log_prob(x)
        eval_lp = model.eval().log_prob(x)
    assert torch.allclose(train_lp, eval_lp, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_model_float64_round_trip_and_sampling(kind: str) -> None:
    model = _perturb(_models()[kind]).double().eval()
    x = _batch(model).double()
    with torch.no_grad():
        z, logdet = model(x)
        assert z.dtype == logdet.dtype == torch.float64 and z.shape == (8, model.dim)
        assert model.log_prob(x).dtype == torch.float64
        rel = (model.flow.inverse(z) - x).norm() / x.norm()
    assert rel < 1e-10
    samples = model.sample(5, y=1)
    assert samples.shape == (5, *model.flow.input_shape) and samples.dtype == torch.float64


def test_logdets_and_densities_stay_float32_under_autocast() -> None:
    model = _perturb(_models()["image"]).eval()
    x = _batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = model(x)
        log_p = model.mixture.log_prob(z)
        loss, _ = objectives.semi_supervised_loss(
            model.mixture, z[:4], logdet[:4], torch.tensor([0, 1, 2, 0]), z[4:], logdet[4:], form="ce"
        )
    assert logdet.dtype == torch.float32 and log_p.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_import_does_not_pull_in_ray_or_pipeline() -> None:
    code = "import sys, flowgmm; assert not any(m == 'ray' or m.startswith(('ray.', 'pipeline')) for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
