"""Environment fix for CI's light install (torch 2.13.0+cpu beside PyPI's CUDA-built torchvision 0.28.0).

torchvision's compiled ops cannot load against the CPU torch wheel, yet its Python side still registers fake
kernels for `torchvision::nms`/`qnms`, which then fails at import. This hook defines those two op schemas the
first time torchvision is imported, in every process of the virtual environment (Ray workers included).
It lives in the CI virtual environment only, never in product code: on a normal install torchvision imports
natively and this hook does nothing.
"""

import importlib.abc
import sys


class _TorchvisionShim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            if torch.version.cuda is None:  # CPU torch: torchvision's CUDA-linked ops cannot load
                lib = torch.library.Library("torchvision", "FRAGMENT")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _TorchvisionShim.lib = lib
        except Exception:
            pass
        return None


if not any(isinstance(f, _TorchvisionShim) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionShim())
