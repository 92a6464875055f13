"""flowgmm: semi-supervised learning with normalizing flows (FlowGMM, Izmailov et al., ICML 2020).

Plain PyTorch; never imports ray or the pipeline.

Example:
    >>> import torch
    >>> from flowgmm import FlowGMM, vector_flow
    >>> model = FlowGMM(vector_flow(dim=2), num_classes=2)
    >>> z, logdet = model.flow(torch.zeros(1, 2))
    >>> z.shape, torch.allclose(model.flow.inverse(z), torch.zeros(1, 2))
    (torch.Size([1, 2]), True)
"""

from flowgmm import calibration, metrics, objectives
from flowgmm.bijections import Affine, Bijection, Flatten, Sequential
from flowgmm.coupling import AffineCoupling, channel_mask, checkerboard_mask, half_mask
from flowgmm.flows import image_flow, vector_flow
from flowgmm.linear import LULinear
from flowgmm.mixture import GaussianMixture
from flowgmm.model import FlowGMM
from flowgmm.permutation import Permutation
from flowgmm.preprocess import Logit, dequantize
from flowgmm.reshape import FactorOut, Squeeze
from flowgmm.splines import RQSplineCoupling, rq_spline

__all__ = [
    "FlowGMM",
    "GaussianMixture",
    "image_flow",
    "vector_flow",
    "dequantize",
    "Bijection",
    "Sequential",
    "Affine",
    "Flatten",
    "AffineCoupling",
    "RQSplineCoupling",
    "Permutation",
    "LULinear",
    "rq_spline",
    "Logit",
    "Squeeze",
    "FactorOut",
    "checkerboard_mask",
    "channel_mask",
    "half_mask",
    "objectives",
    "calibration",
    "metrics",
]
