"""Every flowgmm module carries a short runnable example in its docstring; run them all."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = [
    "flowgmm",
    "flowgmm.bijections",
    "flowgmm.coupling",
    "flowgmm.reshape",
    "flowgmm.preprocess",
    "flowgmm.nets",
    "flowgmm.flows",
    "flowgmm.splines",
    "flowgmm.permutation",
    "flowgmm.linear",
    "flowgmm.mixture",
    "flowgmm.model",
    "flowgmm.objectives",
    "flowgmm.calibration",
    "flowgmm.metrics",
    "flowgmm.ood",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__ and ">>>" in module.__doc__, f"{name} has no runnable example"
    torch.manual_seed(0)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
