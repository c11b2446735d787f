"""Lets PyPI's CUDA-linked torchvision import on CPU-only torch (installed by scripts/run.sh).

The test host pins torchvision 0.28.0 from PyPI. That wheel links its C++ ops against CUDA
libraries the CPU torch wheel lacks, so ``import torchvision`` dies registering fake kernels for
``torchvision::nms`` -- and transformers imports torchvision whenever it is installed. run.sh
installs this module (with a .pth line) only when that failure is detected: before torchvision
is first imported, it declares the two op schemas, so the pure-Python parts ComfyUI and
transformers use import; ``torchvision.ops.nms`` itself stays unusable.
"""

import importlib.abc
import sys

_LIBRARIES = []


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        library = torch.library.Library("torchvision", "FRAGMENT")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(library)
        return None  # the regular finders import torchvision itself


sys.meta_path.insert(0, _DeclareTorchvisionOps())
