"""Learning on two moons (1000 points, 10 labels): FlowGMM beats the same flow trained on the labels alone,
and its class-conditional samples land in the right moon.  ``bench/bench_moons.py`` times this recipe."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from flowgmm import FlowGMM, objectives, vector_flow


@dataclass(frozen=True)
class MoonsRecipe:
    """Small, capped configuration (a few seconds per run on one CPU thread)."""

    iterations: int = 600
    lr: float = 5e-3
    unlabeled_batch: int = 256
    num_couplings: int = 6
    hidden: int = 128
    means_scale: float = 2.0  # antipodal means at distance 2 * 2 * sqrt(2) in the standardised latent


@dataclass
class MoonsResult:
    model: FlowGMM
    accuracy: float
    x_all: torch.Tensor
    y_all: torch.Tensor


def moons_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
    """1000 training moons (noise 0.05), 5 labeled per class, and 1000 test moons."""
    from sklearn.datasets import make_moons

    x, y = make_moons(1000, noise=0.05, random_state=seed)
    x_test, y_test = make_moons(1000, noise=0.05, random_state=seed + 1000)
    rng = np.random.default_rng(seed)
    labeled = np.concatenate([rng.choice(np.flatnonzero(y == k), 5, replace=False) for k in (0, 1)])
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return as_t(x), torch.as_tensor(y), labeled, as_t(x_test), torch.as_tensor(y_test)


def train_moons(seed: int, semi_supervised: bool = True, recipe: MoonsRecipe = MoonsRecipe()) -> MoonsResult:
    """Train FlowGMM (labeled + unlabeled NLL) or the same model on the 10 labels only; test accuracy."""
    x, y, labeled, x_test, y_test = moons_data(seed)
    torch.manual_seed(seed)
    flow = vector_flow(2, num_couplings=recipe.num_couplings, hidden=recipe.hidden, standardize=(x.mean(0), x.std(0)))
    model = FlowGMM(flow, num_classes=2, means_scale=recipe.means_scale, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.iterations)
    gen = torch.Generator().manual_seed(seed)
    x_lab, y_lab = x[labeled], y[labeled]
    n_lab = len(labeled)
    model.train()
    for _ in range(recipe.iterations):
        if semi_supervised:
            idx = torch.randint(0, len(x), (recipe.unlabeled_batch,), generator=gen)
            z, logdet = model(torch.cat([x_lab, x[idx]]))  # one call on the concatenated batch
            loss, _ = objectives.semi_supervised_loss(
                model.mixture, z[:n_lab], logdet[:n_lab], y_lab, z[n_lab:], logdet[n_lab:]
            )
        else:
            z, logdet = model(x_lab)
            loss, _ = objectives.semi_supervised_loss(model.mixture, z, logdet, y_lab)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model.predict(x_test) == y_test).float().mean().item()
    return MoonsResult(model, accuracy, x, y)


def sample_agreement(result: MoonsResult, n: int = 500, seed: int = 0) -> float:
    """Fraction of class-conditional samples (temperature 1) that a 1-NN on the labeled moons puts in their class."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=1).fit(result.x_all.numpy(), result.y_all.numpy())
    gen = torch.Generator().manual_seed(seed)
    hits = []
    for k in (0, 1):
        samples = result.model.sample(n, y=k, temperature=1.0, generator=gen)
        hits.append(knn.predict(samples.numpy()) == k)
    return float(np.concatenate(hits).mean())


@pytest.fixture(scope="module")
def moons_runs() -> dict[str, list]:
    pytest.importorskip("sklearn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        semi = [train_moons(seed, True) for seed in range(3)]
        labels_only = [train_moons(seed, False).accuracy for seed in range(3)]
    finally:
        torch.set_num_threads(threads)
    return {"semi": semi, "labels_only": labels_only}


def test_flowgmm_beats_labels_only_on_moons(moons_runs: dict[str, list]) -> None:
    semi = [r.accuracy for r in moons_runs["semi"]]
    labels_only = moons_runs["labels_only"]
    print(f"FlowGMM {semi}  labels-only {labels_only}")
    assert np.median(semi) >= 0.95
    assert np.median(semi) >= np.median(labels_only) + 0.05


def test_class_conditional_samples_land_in_their_moon(moons_runs: dict[str, list]) -> None:
    agreement = [sample_agreement(r, seed=i) for i, r in enumerate(moons_runs["semi"])]
    print(f"1-NN agreement of samples {agreement}")
    assert np.median(agreement) >= 0.95
