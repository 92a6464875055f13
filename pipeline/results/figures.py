"""Pictures for a run, rendered to PNG bytes (matplotlib, Agg backend): reliability diagrams, OOD log-likelihood
histograms, a confusion matrix, class-mean images, class-conditional samples, latent interpolations, the histogram of
unlabeled points' distances to the decision boundary and the 2-D data/latent picture (the paper's Figure 2)."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reliability(before: dict, after: dict) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True)
    for ax, bins, title in ((axes[0], before, "before calibration"), (axes[1], after, "after variance scaling")):
        conf, acc, count = (np.asarray(bins[k], dtype=float) for k in ("confidence", "accuracy", "count"))
        edges = np.asarray(bins.get("edges", np.linspace(0, 1, len(conf) + 1)))
        centers = (edges[:-1] + edges[1:]) / 2
        mask = count > 0
        ax.bar(centers[mask], acc[mask], width=np.diff(edges)[mask], edgecolor="k", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
        ax.plot(conf[mask], acc[mask], "o", ms=3, color="C3", label="mean confidence")
        ax.set_title(title)
        ax.set_xlabel("confidence")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    return _png(fig)


def confusion(pred: np.ndarray, y: np.ndarray, names: Sequence[str]) -> bytes:
    k = len(names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, pred), 1)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.5, 0.45 * k + 2))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


OOD_AXES = {  # the x label of each OOD score's histogram (flowgmm.ood: higher = more in-domain)
    "log_px": "log p(x)  (nats, D={dim})",
    "latent": "best class's log N(f(x); mu_k, v_k I)  (nats)",
    "complexity": "zlib bits - model bits  (input complexity corrected)",
    "max_prob": "max p(y | x)  (calibrated)",
    "llr": "log p(x) - log p_background(x)  (nats)",
}


def ood_histogram(
    in_scores: np.ndarray, out_scores: dict[str, np.ndarray], threshold: float | None, xlabel: str
) -> bytes:
    """The axis spans the in-domain scores and as far again below them: out-of-domain scores can be orders of
    magnitude lower (pixels' log-densities), so those below the axis pile up at its left edge (share in the legend).
    ``threshold``: the served flag's, drawn when given."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    allv = np.concatenate([in_scores, *out_scores.values()])
    in_lo, in_hi = np.percentile(in_scores, [0.5, 99.9])
    lo = in_lo - max(in_hi - in_lo, 1e-6)
    hi = max(in_hi, float(np.percentile(allv, 99.9)), lo + 1e-6)
    bins = np.linspace(lo, hi, 80)
    ax.hist(np.clip(in_scores, lo, hi), bins=bins, alpha=0.6, density=True, label="test (in-domain)")
    for name, s in out_scores.items():
        below = float((s < lo).mean())
        label = f"{name} ({below:.0%} below the axis)" if below >= 0.005 else name
        ax.hist(np.clip(s, lo, hi), bins=bins, alpha=0.5, density=True, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="OOD threshold")
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    return _png(fig)


def _grid(images: np.ndarray, rows: int, cols: int, titles: Sequence[str] | None = None) -> bytes:
    """``images`` (N, C, H, W in [0, 1]) tiled row by row into one picture, a white line between them, with column
    titles; one image drawn, not an axes per image (a 10 x 8 grid: ~0.1 s instead of ~1 s)."""
    n, c, h, w = images.shape
    gap = max(1, h // 14)
    canvas = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, c), dtype=np.float32)
    for idx in range(min(n, rows * cols)):
        r, q = divmod(idx, cols)
        canvas[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = images[idx].transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(cols * 0.9, rows * 0.9 + (0.3 if titles else 0)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for q, title in enumerate(list(titles or [])[:cols]):
        ax.text(q * (w + gap) + w / 2, -gap, str(title)[:10], ha="center", va="bottom", fontsize=7)
    return _png(fig)


def _to_pixels(x: torch.Tensor) -> np.ndarray:
    """Flow-input space (dequantized [0,1]) -> clipped [0,1] pixels."""
    return x.detach().float().clamp(0, 1).cpu().numpy()


@torch.no_grad()
def class_means(model, names: Sequence[str]) -> bytes:
    means = model.mixture.means.detach().float()
    x = model.flow.inverse(means)
    return _grid(_to_pixels(x), 1, len(names), names)


@torch.no_grad()
def class_samples(model, names: Sequence[str], temperature: float, per_class: int = 8) -> bytes:
    k = len(names)
    torch.manual_seed(0)
    rows = [model.sample(per_class, y=c, temperature=temperature) for c in range(k)]
    x = torch.stack(rows, 1).reshape(per_class * k, *rows[0].shape[1:])  # row r: r-th sample of each class
    return _grid(_to_pixels(x), per_class, k, names)


@torch.no_grad()
def interpolations(model, z: torch.Tensor, y: np.ndarray, names: Sequence[str], steps: int = 9) -> bytes:
    """Straight lines in latent space, decoded: three rows between two test images of one class, three rows between
    images of two different classes (the paper's Figure 4). ``z``: the test split's latents, ``y``: its labels."""
    pairs, k = [], len(names)
    first = {c: np.flatnonzero(y == c) for c in range(k)}
    for c in range(min(3, k)):  # within a class: its first two test images
        if len(first[c]) >= 2:
            pairs.append((first[c][0], first[c][1], f"{names[c]}"))
    for c in range(min(3, k)):  # across classes: class c to class c + 3 (mod k)
        d = (c + 3) % k
        if len(first[c]) and len(first[d]) and c != d:
            pairs.append((first[c][0], first[d][0], f"{names[c]}->{names[d]}"))
    t = torch.linspace(0, 1, steps, dtype=z.dtype)[:, None]
    path = torch.cat([(1 - t) * z[i] + t * z[j] for i, j, _ in pairs])
    x = model.flow.inverse(path.to(model.mixture.means.dtype))
    return _grid(_to_pixels(x), len(pairs), steps)


def boundary_distances(distances: dict[str, np.ndarray]) -> bytes:
    """Histogram of unlabeled points' latent distances to the decision boundary, one per model (the paper's
    Figure 5: semi-supervised training moves the boundary away from the unlabeled data)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    hi = float(np.percentile(np.concatenate(list(distances.values())), 99.5))
    bins = np.linspace(0.0, max(hi, 1e-6), 60)
    for name, d in distances.items():
        ax.hist(np.clip(d, 0, hi), bins=bins, alpha=0.55, density=True, label=f"{name} (median {np.median(d):.2f})")
    ax.set_xlabel("latent distance of an unlabeled point to the decision boundary")
    ax.legend(fontsize=8)
    return _png(fig)


@torch.no_grad()
def two_d(model, x: np.ndarray, y: np.ndarray) -> bytes:
    """Data space and latent space with the decision boundary (the paper's Figure 2)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    xt = torch.as_tensor(x, dtype=torch.float32)
    z, _ = model(xt)
    lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    pred = model.predict(grid).numpy().reshape(gx.shape)
    axes[0].contourf(gx, gy, pred, alpha=0.25, cmap="coolwarm")
    axes[0].scatter(x[:, 0], x[:, 1], c=y, s=4, cmap="coolwarm")
    axes[0].set_title("data space, decision regions")
    zn = z.numpy()
    axes[1].scatter(zn[:, 0], zn[:, 1], c=y, s=4, cmap="coolwarm")
    mu = model.mixture.means.detach().numpy()
    axes[1].scatter(mu[:, 0], mu[:, 1], c="k", marker="x", s=60, label="class means")
    axes[1].set_title("latent space")
    axes[1].legend(fontsize=8)
    return _png(fig)
