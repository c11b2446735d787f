"""Load pickled checkpoints without ever executing code from the file.

A ``.pt`` file is a pickle, and a pickle may call any function it names. Plain
``torch.load(weights_only=True)`` is safe but rejects the metadata real fairseq checkpoints carry
(``argparse.Namespace`` args, numpy scalars), and ``weights_only=False`` runs whatever the file
says. This unpickler sits in between:

* globals on the allow-list (torch's own tensor/storage rebuild functions, plain containers,
  numpy's array/scalar/dtype reconstruction) resolve to the real objects;
* any other global becomes an *inert stand-in* class that is never imported. Creating an
  instance of it the way pickle instantiates classes (``NEWOBJ`` + ``BUILD``, as for
  ``argparse.Namespace``) gives an object that only holds the pickled state;
* *calling* a stand-in (``REDUCE``, e.g. ``os.system(...)``) raises :class:`RefusedPickleError`
  before anything runs.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import os
import pickle
import zipfile
from typing import Any

import torch

from .errors import CheckpointError, RefusedPickleError

REFUSED_HELP = (
    "Nothing from the file was executed. Checkpoints are pickles, and a pickle that calls "
    "arbitrary functions can run code on your machine, so kosmosg_core only rebuilds tensors and "
    "plain containers. The official Kosmos-G release files need no such call: if this file is "
    "meant to be one, download it again from the official source. If you made the file yourself "
    "and trust it, save just the weights (torch.save({'model': state_dict}, path)) or save them "
    "as .safetensors."
)


def _numpy_allowed() -> dict[str, Any]:
    try:
        import numpy as np
    except ImportError:  # numpy is optional for torch; without it no numpy globals are allowed
        return {}
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[str, Any] = {}
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray.scalar"] = multiarray.scalar
        allowed[f"{package}.multiarray._reconstruct"] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):
            allowed[f"{package}.numeric._frombuffer"] = numeric._frombuffer
    allowed["numpy.dtype"] = np.dtype
    allowed["numpy.ndarray"] = np.ndarray
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                allowed[f"numpy.dtypes.{name}"] = getattr(dtypes, name)
    return allowed


def _torch_allowed() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


def _builtin_allowed() -> dict[str, Any]:
    import collections

    return {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": bytearray,
        "builtins.complex": complex,
        "builtins.slice": slice,
        "builtins.range": range,
        "builtins.object": object,
        "copyreg._reconstructor": _reconstructor,
    }


class _StandInMeta(type):
    """Metaclass whose call refuses: ``REDUCE`` with a stand-in is a call of an unknown callable."""

    def __call__(cls, *args, **kwargs):
        raise RefusedPickleError(
            f"refused to call {cls._pickled_global}(...) while unpickling the checkpoint: it is not "
            f"on the allow-list of tensor and container rebuild functions. {REFUSED_HELP}"
        )


class InertObject(metaclass=_StandInMeta):
    """Instance of a class the checkpoint names but that was never imported.

    It keeps the pickled state (a Namespace's fields become attributes) and has no behaviour.
    """

    _pickled_global = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_pickled_args"] = args
        return obj

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickled_state"] = state

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_pickled")}
        return f"<inert {self._pickled_global} {fields}>"


_STAND_INS: dict[str, type] = {}


def stand_in(module: str, name: str) -> type:
    """The (cached) inert stand-in class for ``module.name``."""
    qualified = f"{module}.{name}"
    if qualified not in _STAND_INS:
        _STAND_INS[qualified] = _StandInMeta(
            name, (InertObject,), {"_pickled_global": qualified, "__module__": module}
        )
    return _STAND_INS[qualified]


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects), restricted to stand-ins and real types."""
    if isinstance(cls, _StandInMeta) and base is object:
        obj = cls.__new__(cls)
        if state is not None:
            obj.__setstate__(state)
        return obj
    if isinstance(cls, _StandInMeta) or isinstance(base, _StandInMeta):
        raise RefusedPickleError(
            f"refused to rebuild {getattr(cls, '_pickled_global', cls)} on base "
            f"{getattr(base, '_pickled_global', base)} while unpickling the checkpoint. {REFUSED_HELP}"
        )
    return copyreg._reconstructor(cls, base, state)


_ALLOWED: dict[str, Any] | None = None


def allowed_globals() -> dict[str, Any]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = {**_torch_allowed(), **_numpy_allowed(), **_builtin_allowed()}
    return _ALLOWED


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals and stands in for the rest."""

    def find_class(self, module: str, name: str):
        # Protocol 0-2 pickles written by Python 3 carry Python 2 names (copy_reg, __builtin__).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = allowed_globals().get(f"{module}.{name}")
        if found is not None:
            return found
        return stand_in(module, name)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class and a ``load``."""

    __name__ = "kosmosg_core.safe_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def restricted_torch_load(path: str | os.PathLike, mmap: bool = True) -> Any:
    """``torch.load`` a file through :class:`RestrictedUnpickler` onto the CPU.

    Zip-format files are memory-mapped, so tensors are read from disk only when touched.
    Raises :class:`RefusedPickleError` (nothing executed) or :class:`CheckpointError`.
    """
    path = os.fspath(path)
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(
            path,
            map_location="cpu",
            pickle_module=_RestrictedPickleModule,
            weights_only=False,  # safety comes from the restricted pickle module, not from torch
            mmap=use_mmap,
        )
    except RefusedPickleError as exc:
        raise RefusedPickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(damaged_file_message(path, exc)) from exc


def damaged_file_message(path: str, exc: BaseException) -> str:
    size = os.path.getsize(path) if os.path.exists(path) else 0
    head = b""
    if size:
        with open(path, "rb") as handle:
            head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")):
        hint = "it is an HTML/XML page (a failed download or an error page), not a checkpoint"
    elif head.startswith(b"version https://git-lfs"):
        hint = "it is a Git LFS pointer file, not the checkpoint itself (run `git lfs pull`)"
    elif size == 0:
        hint = "the file is empty"
    else:
        hint = "it is truncated or corrupt (an interrupted download or copy is the usual cause)"
    return (
        f"could not read checkpoint {path} ({size:,} bytes): {hint}. Download or copy it again. "
        f"[{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
    )
