"""Training objectives for FlowGMM (all in nats, averaged over the batch).

Notation: ``z = f(x)``, ``logdet = log|det df/dx|``, ``N_k`` the mixture components, ``pi_k`` the weights.

* :func:`labeled_nll` ``= mean[-log N_y(z) - log pi_y - logdet]`` (``-log p(x, y)``)
* :func:`unlabeled_nll` ``= mean[-log sum_k pi_k N_k(z) - logdet]`` (``-log p(x)``)
* :func:`cross_entropy` ``= mean[-log p(y | z)]``
* :func:`consistency_nll` ``= mean[-log N_t(z) - logdet]`` with targets ``t`` from :func:`consistency_targets`
* :func:`semi_supervised_loss` combines them (``form="nll"`` for vectors, ``"ce"`` for images)
* :func:`linear_ramp` (consistency weight schedule in optimizer steps), :func:`bits_per_dim`.

The mixture always evaluates in float32 (float64 for float64 latents), even if ``z`` comes from autocast.

Example:
    >>> import torch
    >>> from flowgmm.mixture import GaussianMixture
    >>> from flowgmm.objectives import semi_supervised_loss, linear_ramp
    >>> gmm = GaussianMixture(2, 3)
    >>> z_l, z_u = torch.randn(4, 3), torch.randn(8, 3)
    >>> ld_l, ld_u = torch.zeros(4), torch.zeros(8)
    >>> loss, parts = semi_supervised_loss(gmm, z_l, ld_l, torch.tensor([0, 1, 0, 1]), z_u, ld_u)
    >>> sorted(parts)
    ['ce', 'consistency', 'labeled_nll', 'loss', 'unlabeled_nll']
    >>> linear_ramp(50, ramp_steps=100, max_weight=2.0)
    1.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowgmm.mixture import GaussianMixture

__all__ = [
    "labeled_nll",
    "unlabeled_nll",
    "cross_entropy",
    "consistency_nll",
    "consistency_targets",
    "linear_ramp",
    "bits_per_dim",
    "semi_supervised_loss",
]


def _up(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def labeled_nll(mixture: GaussianMixture, z: Tensor, logdet: Tensor, y: Tensor) -> Tensor:
    """``mean[-log N_y(z) - log pi_y - logdet]`` over the batch (``-log p(x, y)``)."""
    joint = mixture.class_logits(z).gather(1, y.long().view(-1, 1)).squeeze(1)
    return -(joint + _up(logdet)).mean()


def unlabeled_nll(mixture: GaussianMixture, z: Tensor, logdet: Tensor) -> Tensor:
    """``mean[-log p_mix(z) - logdet]`` over the batch (``-log p(x)``)."""
    return -(mixture.log_prob(z) + _up(logdet)).mean()


def cross_entropy(mixture: GaussianMixture, z: Tensor, y: Tensor) -> Tensor:
    """``mean[-log p(y | z)]`` with the mixture posterior (the ``log pi`` prior included)."""
    return F.cross_entropy(mixture.class_logits(z), y.long())


def consistency_nll(mixture: GaussianMixture, z: Tensor, logdet: Tensor, target_y: Tensor) -> Tensor:
    """``mean[-log N_t(z) - logdet]``: the class-conditional NLL of the target class ``t``, over the rows whose
    target is not -1 (0 when there are none)."""
    keep = target_y >= 0
    nll = -(mixture.log_prob(z, target_y.clamp_min(0)) + _up(logdet))
    return (nll * keep).sum() / keep.sum().clamp_min(1)


@torch.no_grad()
def consistency_targets(mixture: GaussianMixture, z_aug: Tensor, threshold: float = 0.0) -> Tensor:
    """Hard targets ``argmax_k [log pi_k + log N_k(z_aug)]`` from a second augmentation, without gradient; -1 where
    the posterior's largest probability is below ``threshold`` (those rows get no consistency term)."""
    logits = mixture.class_logits(z_aug.detach())
    targets = logits.argmax(1)
    if threshold > 0:
        targets = torch.where(logits.softmax(1).amax(1) >= threshold, targets, torch.full_like(targets, -1))
    return targets


def linear_ramp(step: int, ramp_steps: int, max_weight: float) -> float:
    """``max_weight * min(step / ramp_steps, 1)``: 0 at step 0, ``max_weight`` from ``ramp_steps`` on."""
    if ramp_steps <= 0:
        return float(max_weight)
    return float(max_weight) * min(max(step, 0) / ramp_steps, 1.0)


def bits_per_dim(log_prob: Tensor, dim: int, num_bins: int = 256) -> Tensor:
    """Bits per dimension of discrete data from a density on ``[0, 1]^dim``:
    ``-(log_prob - dim log num_bins) / (dim ln 2)`` (elementwise; average it yourself)."""
    return -(log_prob - dim * math.log(num_bins)) / (dim * math.log(2.0))


def semi_supervised_loss(
    mixture: GaussianMixture,
    z_lab: Tensor,
    logdet_lab: Tensor,
    y_lab: Tensor,
    z_unl: Tensor | None = None,
    logdet_unl: Tensor | None = None,
    *,
    form: str = "nll",
    label_weight: float = 1.0,
    unlabeled_weight: float = 1.0,
    consistency_weight: float = 0.0,
    cons_targets: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The FlowGMM training loss and its detached parts.

    ``form="nll"`` (vectors; the reference's tabular loss plus ``log pi_y``)::

        label_weight * labeled_nll + unlabeled_weight * unlabeled_nll + consistency_weight * consistency

    ``form="ce"`` (images, as the reference's image script)::

        label_weight * CE(lab) + [sum_lab nll_mix + unlabeled_weight * sum_unl nll_mix] / (n_lab + n_unl)
        + consistency_weight * consistency

    ``consistency = mean[-log N_t(z) - logdet]`` over the unlabeled examples when ``len(cons_targets)`` is
    ``n_unl``, or over labeled then unlabeled examples when it is ``n_lab + n_unl``.  It is skipped when
    ``consistency_weight == 0`` or ``cons_targets`` is None.  ``z_unl`` may be None (labels-only training).

    Returns ``(loss, parts)`` with ``parts`` keys ``labeled_nll``, ``unlabeled_nll``, ``ce``,
    ``consistency``, ``loss`` (detached scalars; 0 where a part is not computed).
    """
    if form not in ("nll", "ce"):
        raise ValueError(f"form must be 'nll' or 'ce', got {form!r}")
    zero = torch.zeros((), dtype=torch.float64 if z_lab.dtype == torch.float64 else torch.float32, device=z_lab.device)
    n_lab = z_lab.shape[0]
    n_unl = 0 if z_unl is None else z_unl.shape[0]

    lab_nll = labeled_nll(mixture, z_lab, logdet_lab, y_lab) if n_lab else zero
    ce = cross_entropy(mixture, z_lab, y_lab) if n_lab else zero
    unl_nll = unlabeled_nll(mixture, z_unl, logdet_unl) if n_unl else zero  # type: ignore[arg-type]

    if form == "nll":
        loss = label_weight * lab_nll + unlabeled_weight * unl_nll
    else:
        lab_mix = -(mixture.log_prob(z_lab) + _up(logdet_lab)).sum() if n_lab else zero
        loss = label_weight * ce + (lab_mix + unlabeled_weight * unl_nll * n_unl) / max(n_lab + n_unl, 1)

    cons = zero
    if consistency_weight != 0 and cons_targets is not None:
        cons = _consistency(mixture, z_lab, logdet_lab, z_unl, logdet_unl, cons_targets)
        loss = loss + consistency_weight * cons

    parts = {"labeled_nll": lab_nll, "unlabeled_nll": unl_nll, "ce": ce, "consistency": cons, "loss": loss}
    return loss, {k: v.detach().float() for k, v in parts.items()}


def _consistency(
    mixture: GaussianMixture,
    z_lab: Tensor,
    logdet_lab: Tensor,
    z_unl: Tensor | None,
    logdet_unl: Tensor | None,
    targets: Tensor,
) -> Tensor:
    """The consistency NLL over the unlabeled rows (``n_unl`` targets) or all rows (``n_lab + n_unl`` targets)."""
    n_lab, n_unl = z_lab.shape[0], 0 if z_unl is None else z_unl.shape[0]
    if targets.shape[0] == n_unl:
        z_c, ld_c = z_unl, logdet_unl
    elif targets.shape[0] == n_lab + n_unl:
        z_c = z_lab if z_unl is None else torch.cat([z_lab, z_unl])
        ld_c = logdet_lab if logdet_unl is None else torch.cat([_up(logdet_lab), _up(logdet_unl)])
    else:
        raise ValueError("cons_targets must have n_unl or n_lab + n_unl entries")
    return consistency_nll(mixture, z_c, ld_c, targets)  # type: ignore[arg-type]
