"""A stand-in for PyAV (``av``) used only by scripts/device_check.sh.

ComfyUI 0.33.0 imports ``av`` at start-up (comfy_api's video and audio types, the video/audio
nodes), but the device check runs only image nodes. PyAV's wheel (36 MB) does not fit the 64 MiB
that may travel to the GPU machine, so this stub is put on ``sys.path`` there instead: every name
and submodule imports, and any real use raises, so a run that needed PyAV would fail loudly.
"""

import importlib.abc
import importlib.machinery
import sys
import types

MESSAGE = "PyAV is not installed here (the device check's stand-in for 'av'): video and audio nodes cannot run"


class _Unavailable(type):
    def __getattr__(cls, name):  # e.g. ColorPrimaries.BT709 in a default argument
        if name.startswith("__"):
            raise AttributeError(name)
        return cls

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(MESSAGE)


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Unavailable(name, (), {})
        setattr(self, name, value)
        return value

    def open(self, *args, **kwargs):
        raise RuntimeError(MESSAGE)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("av."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Module(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.insert(0, _Finder())
sys.modules[__name__].__class__ = _Module
__version__ = "0.0.0-stub"
