"""Normalisation that is the same under DDP and never moved by a forward without gradient."""

from __future__ import annotations

import torch

from flowgmm.nets import ActNorm2d, ResNet, frozen_batch_stats
from pipeline.config import resolve
from pipeline.train.step import compute_loss


def test_actnorm_initialises_from_its_first_training_batch_then_keeps_its_parameters():
    n = ActNorm2d(3)
    x = torch.randn(128, 3, 4, 4) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + 2.0
    y = n(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    before = [p.clone() for p in n.parameters()]
    n(torch.randn(16, 3, 4, 4) * 10)  # a second batch does not re-initialise
    assert all(torch.equal(a, b) for a, b in zip(before, n.parameters()))
    n2 = ActNorm2d(3).eval()
    assert torch.equal(n2(x), x)  # eval mode never initialises: identity until trained


def test_frozen_batch_stats_leaves_running_statistics_alone():
    net = ResNet(2, 4, mid_channels=8, num_blocks=1, norm="batch").train()
    buffers = lambda: [b.clone() for n, b in net.named_buffers() if "running" in n]
    before = buffers()
    with torch.no_grad(), frozen_batch_stats(net):
        net(torch.randn(8, 2, 4, 4) * 5)
    assert all(torch.equal(a, b) for a, b in zip(before, buffers()))
    net(torch.randn(8, 2, 4, 4) * 5)  # outside the block the statistics move as usual
    assert not all(torch.equal(a, b) for a, b in zip(before, buffers()))


def test_flowgmm_cons_second_view_does_not_move_batchnorm_statistics():
    """The step's no-gradient forward on the second views leaves the running statistics where the gradient
    forward put them: the same as a FlowGMM step on the same batch."""
    from flowgmm.spec import build_model
    from pipeline.data.ingest import Step

    spec = {"kind": "image", "shape": [1, 8, 8], "num_classes": 10, "levels": 17}
    spec["model"] = {"flow": "image", "num_scales": 2, "mid_channels": 8, "num_blocks": 1, "norm": "batch"}
    g = torch.Generator().manual_seed(0)
    x = lambda n: torch.rand(n, 1, 8, 8, generator=g)
    batch = Step(x(4), torch.arange(4), x(8), x(8), x(4))
    stats = {}
    for method in ("flowgmm", "flowgmm_cons"):
        torch.manual_seed(0)
        model = build_model(spec).train()
        t = resolve("digits", overrides=[f"train.method={method}", "train.consistency_start_step=0"]).train
        torch.manual_seed(1)
        compute_loss(model, model, batch, t, step=10**6, levels=17)
        stats[method] = [b.clone() for n, b in model.named_buffers() if "running" in n]
    assert all(torch.equal(a, b) for a, b in zip(stats["flowgmm"], stats["flowgmm_cons"]))
