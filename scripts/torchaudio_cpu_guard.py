"""Lets PyPI's CUDA-linked torchaudio import on CPU-only torch (the ComfyUI 0.33.0 test host).

ComfyUI 0.33.0 imports torchaudio at start-up (``comfy/sd.py`` pulls in its audio VAE), and the
newest torchaudio served here, 2.11.1, is built for torch 2.11 + CUDA: loading its native
libraries into CPU torch 2.13 fails, so ``import torchaudio`` dies. scripts/run.sh installs it with
``--no-deps`` and this module (with a .pth line) in that venv only: when torchaudio looks for its
native libraries, it is told they are absent (its own behaviour for a build without them), so the
pure-Python parts import. Audio nodes stay unusable; this pack uses none of them.
"""

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchaudio._extension.utils"


def _absent(lib):  # torchaudio's _load_lib returns False when a library file is not found
    return False


class _Loader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module._load_lib = _absent


class _NoTorchaudioNativeLibraries(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _NoTorchaudioNativeLibraries())
