"""Load pickled checkpoints without executing code from the file and without touching anything else.

A ``.pt`` file is a pickle, and a pickle may call any function it names and then change the objects it
got (set attributes, fill items). Plain ``torch.load(weights_only=True)`` rejects the metadata real
fairseq checkpoints carry (``argparse.Namespace`` args, numpy scalars), and ``weights_only=False`` runs
whatever the file says. This module reads both torch formats (zip and legacy) itself, with a pure-Python
unpickler whose every side-effecting opcode goes through a policy:

* globals on a short allow-list resolve to real objects, but may only be *called* through a checked
  wrapper (tensor rebuilds, plain containers, numpy scalars/arrays/dtypes) that refuses any argument
  that could allocate more than the file holds; any other global becomes an *inert stand-in* class
  that is never imported, and calling a stand-in raises :class:`RefusedPickleError`;
* BUILD, SETITEM(S), APPEND(S) and ADDITEMS act only on objects the pickle itself created (inert
  stand-ins, dicts, lists, sets, fresh numpy dtypes/arrays), never on anything a global names, so a
  checkpoint cannot monkeypatch ``collections.Counter`` or a torch function;
* persistent ids are only tensor storages: anything else (torch's ``'module'`` ids, whose legacy
  handling compares and writes source files) is refused, and torch's own loader never runs;
* storage sizes are checked against the bytes in the file, and every tensor against its storage: a
  tensor may not hold more values than its storage (no stride-0 "expanded" views that would balloon
  when copied), and all tensors together at most 4x the storage bytes (ties share storage), so the
  memory a checkpoint can make us take is bounded by its own size.

That is enough because a pickle has no other way to act: its only effects are calls (REDUCE, NEWOBJ,
INST/OBJ and the ``_reconstructor`` path, all routed through the policy), mutations of objects on its
stack (the opcodes above), persistent-id lookups and reads of its own bytes.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import mmap as mmap_module
import os
import pickle
import zipfile
from typing import Any

import torch

from ..errors import CheckpointError, KosmosGError, RefusedPickleError

REFUSED_HELP = (
    "Nothing from the file was executed. Checkpoints are pickles, and a pickle that calls "
    "arbitrary functions can run code on your machine, so kosmosg_core only rebuilds tensors and "
    "plain containers. The official Kosmos-G release files need no such call: if this file is "
    "meant to be one, download it again from the official source. If you made the file yourself "
    "and trust it, save just the weights (torch.save({'model': state_dict}, path)) or save them "
    "as .safetensors."
)
MAX_AMPLIFICATION = 4  # all tensors together may view at most this many times the storage bytes
AMPLIFICATION_SLACK = 16 << 20
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _Malformed(CheckpointError):
    """A structurally wrong pickle (odd reduce args, persistent ids, states); reported with the path."""


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
        if isinstance(state, tuple) and len(state) == 2 and all(isinstance(p, (dict, type(None))) for p in state):
            parts = [p for p in state if p]  # (dict state, slot state)
        elif isinstance(state, dict):
            parts = [state]
        else:
            self.__dict__["_pickled_state"] = state
            return
        for part in parts:
            if not all(isinstance(k, str) for k in part):
                self.__dict__["_pickled_state"] = state
                return
        for part in parts:
            self.__dict__.update(part)

    def __repr__(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_pickled")}
        return f"<inert {self._pickled_global} {fields}>"


_STAND_INS: dict[str, type] = {}


def stand_in(module: str, name: str, cache: dict[str, type] | None = None) -> type:
    """The (cached) inert stand-in class for ``module.name``."""
    cache = _STAND_INS if cache is None else cache
    qualified = f"{module}.{name}"
    if qualified not in cache:
        cache[qualified] = _StandInMeta(name, (InertObject,), {"_pickled_global": qualified, "__module__": module})
    return cache[qualified]


class _StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: only a dtype, for persistent ids."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return self.name


class _Storage:
    """A storage read from the file: ``data`` is a 1-D uint8 tensor (None in a sizing pass)."""

    __slots__ = ("data", "dtype", "nbytes")

    def __init__(self, dtype: torch.dtype, nbytes: int, data: torch.Tensor | None):
        self.dtype, self.nbytes, self.data = dtype, nbytes, data


_STORAGE_DTYPES = {
    "Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128,
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or len(value) > 64 or not all(_is_int(v) for v in value):
        raise _Malformed(f"a tensor's {what} is {type(value).__name__}, not a short tuple of integers")
    return tuple(value)


def _one_or_no_container(args: tuple, name: str) -> tuple:
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict, set, frozenset))):
        raise _Malformed(f"{name} was called with {len(args)} argument(s) of type "
                         f"{', '.join(type(a).__name__ for a in args)}; only a container from the file is accepted")
    return args


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler: allow-listed globals through checked wrappers, stand-ins for the rest,
    mutations only of objects the pickle created, persistent ids only for storages."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: RUF012 - pickle's own per-class opcode table

    def __init__(self, file, *, storage_loader=None, max_bytes: int | None = None, **kwargs):
        kwargs.setdefault("encoding", "utf-8")
        super().__init__(file, **kwargs)
        self._stand_ins: dict[str, type] = {}
        self._global_ids: set[int] = set()
        self._storage_loader = storage_loader
        self._max_bytes = max_bytes
        self.storage_bytes = 0
        self.tensor_bytes = 0

    # -- globals -------------------------------------------------------------------------------
    def find_class(self, module: str, name: str):
        if not isinstance(module, str) or not isinstance(name, str) or len(module) + len(name) > 512:
            raise _Malformed("a global name in the pickle is not a short string")
        # Protocol 0-2 pickles written by Python 3 carry Python 2 names (copy_reg, __builtin__).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = allowed_globals().get(f"{module}.{name}")
        if found is None:
            found = stand_in(module, name, self._stand_ins)
        self._global_ids.add(id(found))
        return found

    def persistent_load(self, pid):
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        if isinstance(kind, bytes):
            kind = kind.decode("ascii", "replace")
        if kind != "storage" or self._storage_loader is None:
            shown = repr(kind)[:60] if isinstance(kind, (str, bytes, int, float)) else type(kind).__name__
            raise RefusedPickleError(
                f"refused a persistent id of type {shown} while unpickling the checkpoint: only tensor "
                f"storages are loaded (torch's 'module' ids would make its loader compare and write source "
                f"files). {REFUSED_HELP}"
            )
        return self._storage_loader(pid[1:])

    # -- calls ---------------------------------------------------------------------------------
    def _name(self, obj) -> str:
        if isinstance(obj, _StandInMeta):
            return obj._pickled_global
        return _GLOBAL_NAMES.get(id(obj), type(obj).__name__)

    def call(self, func, args: tuple, kwargs: dict | None = None):
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise _Malformed("a call in the pickle has arguments that are not a tuple")
        if isinstance(func, _StandInMeta):
            func()  # raises the refusal naming the stand-in
        impl = _CALLS.get(id(func)) if id(func) in self._global_ids else None
        if impl is None:
            raise RefusedPickleError(
                f"refused to call {self._name(func)}(...) while unpickling the checkpoint: it is not on the "
                f"allow-list of tensor and container rebuild functions. {REFUSED_HELP}"
            )
        if kwargs:
            raise _Malformed(f"{self._name(func)} was called with keyword arguments")
        return impl(self, *args)

    def new(self, cls, args: tuple, kwargs: dict | None = None):
        """``cls.__new__(cls, *args)`` (NEWOBJ, INST/OBJ without arguments)."""
        if isinstance(cls, _StandInMeta) and not kwargs:
            return InertObject.__new__(cls, *args)
        if id(cls) in self._global_ids and cls in (collections.OrderedDict, collections.Counter, set, dict, list) \
                and not args and not kwargs:
            return cls.__new__(cls)
        raise RefusedPickleError(
            f"refused to create a {self._name(cls)} object while unpickling the checkpoint: only plain "
            f"containers and inert stand-ins are created. {REFUSED_HELP}"
        )

    def _load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(args, tuple):
            raise _Malformed("NEWOBJ arguments are not a tuple")
        self.append(self.new(cls, args))

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise _Malformed("NEWOBJ_EX arguments are not a tuple and a dict")
        self.append(self.new(cls, args, kwargs))

    def _instantiate(self, klass, args):
        self.append(self.call(klass, tuple(args)) if args else self.new(klass, ()))

    # -- mutations -----------------------------------------------------------------------------
    def _target(self, obj, exact: tuple, action: str, inert: bool = False, numpy: bool = False):
        created = id(obj) not in self._global_ids and not isinstance(obj, type) and (
            type(obj) in exact or (inert and isinstance(obj, InertObject))
            or (numpy and isinstance(obj, _numpy_types())))
        if not created:
            what = (self._name(obj) if id(obj) in self._global_ids or isinstance(obj, type)
                    else "a " + type(obj).__name__)
            raise RefusedPickleError(
                f"refused to {action} {what} while unpickling the checkpoint: a checkpoint may only fill in "
                f"objects it created itself (containers, inert stand-ins), never a class, function or module "
                f"or anything else it names. {REFUSED_HELP}"
            )
        return obj

    def _load_build(self):
        state = self.stack.pop()
        inst = self._target(self.stack[-1], (collections.OrderedDict, collections.Counter), "set the state of",
                            inert=True, numpy=True)
        if isinstance(inst, InertObject):
            InertObject.__setstate__(inst, state)
        elif isinstance(inst, (collections.OrderedDict, collections.Counter)):
            if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
                state = state[0]
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise _Malformed(f"the state given to a {type(inst).__name__} is not a dict of names")
            inst.__dict__.update(state)
        else:
            _numpy_setstate(inst, state)

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        target = self._target(self.stack[-1], (dict, collections.OrderedDict, collections.Counter),
                              "set an item of")
        target[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._target(self.stack[-1], (dict, collections.OrderedDict, collections.Counter), "set items of")
        if len(items) % 2:
            raise _Malformed("SETITEMS with an odd number of values")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _load_append(self):
        value = self.stack.pop()
        self._target(self.stack[-1], (list,), "append to").append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._target(self.stack[-1], (list,), "append to").extend(items)

    def _load_additems(self):
        items = self.pop_mark()
        self._target(self.stack[-1], (set,), "add items to").update(items)

    def _load_bytearray8(self):
        size = int.from_bytes(self.read(8), "little")
        if self._max_bytes is not None and size > self._max_bytes:
            raise _Malformed(f"the pickle declares a {size:,}-byte array in a {self._max_bytes:,}-byte file")
        data = self.read(size)
        if len(data) != size:
            raise _Malformed("the pickle ends inside a byte array")
        self.append(bytearray(data))

    for _code, _method in ((pickle.REDUCE, _load_reduce), (pickle.NEWOBJ, _load_newobj),
                           (pickle.NEWOBJ_EX, _load_newobj_ex), (pickle.BUILD, _load_build),
                           (pickle.SETITEM, _load_setitem), (pickle.SETITEMS, _load_setitems),
                           (pickle.APPEND, _load_append), (pickle.APPENDS, _load_appends),
                           (pickle.ADDITEMS, _load_additems), (pickle.BYTEARRAY8, _load_bytearray8)):
        dispatch[_code[0]] = _method
    del _code, _method

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, storage, offset, size, stride, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A view of ``storage``, refused unless it lies inside it and holds no more values than it."""
        if not isinstance(storage, _Storage):
            raise _Malformed(f"a tensor is rebuilt from a {type(storage).__name__}, not from a storage in the file")
        dtype = storage.dtype if dtype is None else dtype
        if not isinstance(dtype, torch.dtype):
            raise _Malformed(f"a tensor's dtype is a {type(dtype).__name__}")
        sizes, strides = _ints(size, "size"), _ints(stride, "stride")
        if not _is_int(offset) or offset < 0 or len(sizes) != len(strides) or min(sizes + strides + (0,)) < 0:
            raise _Malformed(f"a tensor has offset {offset!r}, size {sizes} and stride {strides}")
        itemsize = dtype.itemsize
        if storage.nbytes % itemsize:
            raise _Malformed(f"a {dtype} tensor views a storage of {storage.nbytes} bytes")
        elements = storage.nbytes // itemsize
        numel = math.prod(sizes)
        extent = offset + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1 if numel else offset
        if extent > elements or numel > elements:
            raise CheckpointError(
                f"a tensor of shape {sizes} (stride {strides}, offset {offset}) needs "
                f"{'more values than' if numel > elements else 'values beyond the end of'} its storage of "
                f"{elements:,} {dtype} values: a tensor may not hold more values than the file stores for it "
                "(expanded or out-of-bounds views are refused). The file is damaged or crafted"
            )
        self.tensor_bytes += numel * itemsize
        if self.tensor_bytes > MAX_AMPLIFICATION * self.storage_bytes + AMPLIFICATION_SLACK:
            raise CheckpointError(
                f"the tensors view {self.tensor_bytes:,} bytes in all but the file stores only "
                f"{self.storage_bytes:,}: more than {MAX_AMPLIFICATION}x through shared storages. The file is "
                "damaged or crafted"
            )
        if storage.data is None:  # sizing pass: no memory taken
            return torch.empty_strided(sizes, strides, dtype=dtype, device="meta")
        typed = storage.data.view(dtype)
        return typed.as_strided(sizes, strides, typed.storage_offset() + offset)


# -- the allow-list: name -> object, and the checked call of each callable one ------------------------
def _numpy():
    try:
        import numpy as np
    except ImportError:  # numpy is optional for torch; without it no numpy globals are allowed
        return None
    return np


def _numpy_types() -> tuple:
    np = _numpy()
    return (np.dtype, np.ndarray) if np is not None else ()


def _numpy_setstate(inst, state) -> None:
    np = _numpy()
    if isinstance(inst, np.ndarray):
        if type(inst) is not np.ndarray or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Malformed("an array's state is not numpy's (version, shape, dtype, fortran, data)")
        shape, dtype, raw = state[-4], state[-3], state[-1]
        shape = _ints(shape, "shape")
        if not isinstance(dtype, np.dtype) or min(shape + (0,)) < 0:
            raise _Malformed("an array's state names no dtype or a negative shape")
        count = math.prod(shape)
        have = len(raw) if isinstance(raw, (list, bytes, bytearray)) else -1
        need = count if isinstance(raw, list) else count * dtype.itemsize
        if have != need:
            raise _Malformed(f"an array of shape {shape} comes with {have} values/bytes instead of {need}")
    inst.__setstate__(state)


def _call_numpy_scalar(unpickler, dtype, data=None, *rest):
    np = _numpy()
    if rest or not isinstance(dtype, np.dtype):
        raise _Malformed("numpy scalar rebuilt without a dtype")
    if dtype.hasobject:
        return data
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Malformed(f"numpy {dtype} scalar rebuilt from {type(data).__name__} of the wrong size")
    return _NUMPY_SCALAR(dtype, data)


def _call_numpy_reconstruct(unpickler, subtype, shape, typecode, *rest):
    np = _numpy()
    if rest or subtype is not np.ndarray or math.prod(_ints(shape, "shape")) > 1 or not isinstance(typecode, bytes):
        raise _Malformed("numpy array rebuilt other than as numpy pickles it (ndarray, (0,), b'b')")
    return _NUMPY_RECONSTRUCT(subtype, shape, typecode)


def _call_numpy_dtype(unpickler, obj, align=False, copy=True, *rest):
    if rest or not isinstance(obj, str) or len(obj) > 64:
        raise _Malformed("numpy dtype rebuilt from something other than a short type code")
    return _numpy().dtype(obj, bool(align), True)  # always a fresh copy: never the shared builtin dtype


def _call_numpy_frombuffer(unpickler, buf, dtype, shape, order="C", *rest):
    np = _numpy()
    shape = _ints(shape, "shape")
    if rest or not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject \
            or min(shape + (0,)) < 0 or math.prod(shape) * dtype.itemsize != len(buf) or order not in ("C", "F"):
        raise _Malformed("numpy array rebuilt from a buffer that does not match its shape")
    return np.frombuffer(buf, dtype).reshape(shape, order=order).copy()


def _call_container(cls):
    def call(unpickler, *args):
        return cls(*_one_or_no_container(args, cls.__name__))
    return call


def _call_bytearray(unpickler, *args):
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin-1")
    raise _Malformed("bytearray rebuilt from something other than bytes (a size would allocate memory)")


def _call_codecs_encode(unpickler, text, encoding="utf-8", *rest):
    if rest or not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Malformed("_codecs.encode used other than for pickled bytes")
    return text.encode("latin-1")


def _call_complex(unpickler, *args):
    if len(args) > 2 or not all(isinstance(a, (int, float, str)) and not isinstance(a, bool) for a in args) \
            or any(isinstance(a, str) and len(a) > 100 for a in args):
        raise _Malformed("complex rebuilt from something other than numbers")
    return complex(*args)


def _call_slice(unpickler, *args):
    if not 1 <= len(args) <= 3 or not all(a is None or _is_int(a) for a in args):
        raise _Malformed("slice rebuilt from something other than integers")
    return slice(*args)


def _call_size(unpickler, *args):
    if len(args) > 1:
        raise _Malformed("torch.Size rebuilt from several arguments")
    return torch.Size(_ints(args[0] if args else (), "size"))


def _call_device(unpickler, *args):
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or len(args[0]) > 32 \
            or (len(args) == 2 and not _is_int(args[1])):
        raise _Malformed("torch.device rebuilt from something other than a device name")
    return torch.device(*args)


def _rebuild_tensor(unpickler, storage, offset, size, stride, *rest):
    if rest:
        raise _Malformed("_rebuild_tensor called with extra arguments")
    return unpickler.tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(unpickler, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None, *rest):
    if rest:
        raise _Malformed("_rebuild_tensor_v2 called with extra arguments")
    return unpickler.tensor(storage, offset, size, stride)  # hooks and metadata are dropped: weights need neither


def _rebuild_tensor_v3(unpickler, storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None, *rest):
    if rest:
        raise _Malformed("_rebuild_tensor_v3 called with extra arguments")
    return unpickler.tensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(unpickler, data, requires_grad=False, hooks=None, state=None, *rest):
    if rest or not isinstance(data, torch.Tensor):
        raise _Malformed("a parameter is rebuilt from something other than a tensor")
    return data  # a plain tensor: its extra state is not needed to read the weights


def _rebuild_from_type_v2(unpickler, func, new_type, args, state=None, *rest):
    if rest or new_type not in (torch.Tensor, torch.nn.Parameter) or func not in (
            torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_tensor_v3,
            torch._utils._rebuild_parameter, torch._utils._rebuild_parameter_with_state):
        raise RefusedPickleError(
            f"refused to rebuild a tensor of type {unpickler._name(new_type)} with {unpickler._name(func)} while "
            f"unpickling the checkpoint: only plain tensors and parameters are rebuilt. {REFUSED_HELP}"
        )
    return unpickler.call(func, args)


def _call_reconstructor(unpickler, cls, base, state=None, *rest):
    """``copyreg._reconstructor`` (protocol 0/1 objects): only stand-ins on ``object``."""
    if not rest and isinstance(cls, _StandInMeta) and base is object:
        obj = InertObject.__new__(cls)
        if state is not None:
            InertObject.__setstate__(obj, state)
        return obj
    raise RefusedPickleError(
        f"refused to rebuild {unpickler._name(cls)} on base {unpickler._name(base)} while unpickling the "
        f"checkpoint. {REFUSED_HELP}"
    )


_ALLOWED: dict[str, Any] | None = None
_CALLS: dict[int, Any] = {}
_GLOBAL_NAMES: dict[int, str] = {}
_NUMPY_SCALAR = _NUMPY_RECONSTRUCT = None


def allowed_globals() -> dict[str, Any]:
    """Qualified name -> the object it resolves to. Callables among them are only called through
    the checked wrappers in ``_CALLS``; the others (storage types, dtypes, classes) are plain values."""
    global _ALLOWED, _NUMPY_SCALAR, _NUMPY_RECONSTRUCT
    if _ALLOWED is not None:
        return _ALLOWED
    import copyreg

    table: dict[str, Any] = {}
    calls: dict[str, Any] = {}

    def add(name, obj, call=None):
        table[name] = obj
        if call is not None:
            calls[name] = call

    for module in ("torch", "torch.cuda"):
        for prefix, dtype in _STORAGE_DTYPES.items():
            add(f"{module}.{prefix}Storage", _StorageType(f"{module}.{prefix}Storage", dtype))
    for name in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
        add(name, _StorageType(name, torch.uint8))
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            add(f"torch.{name}", getattr(torch, name))
    add("torch.Tensor", torch.Tensor)
    add("torch.nn.parameter.Parameter", torch.nn.Parameter)
    add("torch.Size", torch.Size, _call_size)
    add("torch.device", torch.device, _call_device)
    add("torch._utils._rebuild_tensor", torch._utils._rebuild_tensor, _rebuild_tensor)
    add("torch._utils._rebuild_tensor_v2", torch._utils._rebuild_tensor_v2, _rebuild_tensor_v2)
    add("torch._utils._rebuild_tensor_v3", torch._utils._rebuild_tensor_v3, _rebuild_tensor_v3)
    add("torch._utils._rebuild_parameter", torch._utils._rebuild_parameter, _rebuild_parameter)
    add("torch._utils._rebuild_parameter_with_state", torch._utils._rebuild_parameter_with_state, _rebuild_parameter)
    add("torch._tensor._rebuild_from_type_v2", torch._tensor._rebuild_from_type_v2, _rebuild_from_type_v2)
    add("collections.OrderedDict", collections.OrderedDict, _call_container(collections.OrderedDict))
    add("collections.Counter", collections.Counter, _call_container(collections.Counter))
    add("builtins.set", set, _call_container(set))
    add("builtins.frozenset", frozenset, _call_container(frozenset))
    add("builtins.bytearray", bytearray, _call_bytearray)
    add("builtins.complex", complex, _call_complex)
    add("builtins.slice", slice, _call_slice)
    add("builtins.object", object)
    add("_codecs.encode", __import__("_codecs").encode, _call_codecs_encode)
    add("copyreg._reconstructor", copyreg._reconstructor, _call_reconstructor)
    np = _numpy()
    if np is not None:
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray
        _NUMPY_SCALAR, _NUMPY_RECONSTRUCT = multiarray.scalar, multiarray._reconstruct
        for package in ("numpy.core", "numpy._core"):
            add(f"{package}.multiarray.scalar", multiarray.scalar, _call_numpy_scalar)
            add(f"{package}.multiarray._reconstruct", multiarray._reconstruct, _call_numpy_reconstruct)
            add(f"{package}.numeric._frombuffer", _call_numpy_frombuffer, _call_numpy_frombuffer)
        add("numpy.dtype", np.dtype, _call_numpy_dtype)
        add("numpy.ndarray", np.ndarray)
        for name in dir(getattr(np, "dtypes", None) or ()):
            if name.endswith("DType"):
                add(f"numpy.dtypes.{name}", getattr(np.dtypes, name))
    _CALLS.update({id(table[name]): call for name, call in calls.items()})
    _GLOBAL_NAMES.update({id(obj): name for name, obj in table.items()})
    _ALLOWED = table
    return table


# -- the two torch file formats, read without torch.load --------------------------------------------
def _storage_type(value) -> _StorageType:
    if not isinstance(value, _StorageType):
        name = value._pickled_global if isinstance(value, _StandInMeta) else type(value).__name__
        raise _Malformed(f"a storage is declared with type {name}, not one of torch's plain storage types")
    return value


def _zip_records(path: str, size: int) -> tuple[str, dict[str, tuple[int, int]]]:
    """(prefix, name -> (data offset, length)) for every record, each checked to lie inside the file."""
    records: dict[str, tuple[int, int]] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
                raise _Malformed(f"record {info.filename[:80]!r} is compressed; torch stores records uncompressed")
            handle.seek(info.header_offset)
            local = handle.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise _Malformed(f"record {info.filename[:80]!r} has no local header")
            start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                     + int.from_bytes(local[28:30], "little"))
            if start + info.file_size > size:
                raise _Malformed(f"record {info.filename[:80]!r} claims {info.file_size:,} bytes "
                                 "past the end of the file")
            records[info.filename] = (start, info.file_size)
    pickles = [name for name in records if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise zipfile.BadZipFile("the archive has no single <name>/data.pkl: it is not a torch checkpoint")
    return pickles[0][: -len("data.pkl")], records


def _load_zip(path: str, size: int, use_mmap: bool):
    prefix, records = _zip_records(path, size)
    order = records.get(prefix + "byteorder")
    buffer = _file_buffer(path, size)
    if order is not None and bytes(buffer[order[0] : order[0] + order[1]]) not in (b"little", b""):
        raise CheckpointError(f"{path} was saved on a big-endian machine; resave it on a little-endian one")
    loaded: dict[str, _Storage] = {}

    def storage(data: tuple) -> _Storage:
        if len(data) != 4:
            raise _Malformed(f"a storage id has {len(data)} fields instead of 4")
        storage_type, key, _location, numel = data
        dtype = _storage_type(storage_type).dtype
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _Malformed("a storage id has a non-text key or a negative size")
        if key in loaded:
            return loaded[key]
        record = records.get(f"{prefix}data/{key}")
        nbytes = numel * dtype.itemsize
        if record is None or record[1] != nbytes:
            found = "missing" if record is None else f"{record[1]:,} bytes"
            raise CheckpointError(f"storage {key[:40]!r} should hold {nbytes:,} bytes but its record is {found}: "
                                  "the file is truncated or damaged")
        start = record[0]
        if use_mmap and start % 64 == 0:
            data_tensor = torch.frombuffer(buffer, dtype=torch.uint8, offset=start, count=nbytes) if nbytes else \
                torch.empty(0, dtype=torch.uint8)
        else:  # misaligned (not torch's own layout) or no mapping wanted: an aligned copy, as big as the record
            data_tensor = torch.empty(nbytes, dtype=torch.uint8)
            data_tensor.numpy()[:] = memoryview(buffer)[start : start + nbytes]
        loaded[key] = _Storage(dtype, nbytes, data_tensor)
        unpickler.storage_bytes += nbytes
        return loaded[key]

    start, length = records[prefix + "data.pkl"]
    unpickler = RestrictedUnpickler(io.BytesIO(bytes(buffer[start : start + length])), storage_loader=storage,
                                    max_bytes=length)
    return unpickler.load()


def _file_buffer(path: str, size: int):
    """The file mapped copy-on-write (pages are read when touched; writes never reach the file)."""
    if size == 0:
        return b""
    with open(path, "rb") as handle:
        return mmap_module.mmap(handle.fileno(), 0, access=mmap_module.ACCESS_COPY)


def _load_legacy(path: str, size: int):
    """torch's pre-1.6 format: magic, protocol and system-info pickles, the main pickle, the list of
    storage keys, then each storage as an 8-byte element count and its bytes.

    The main pickle is read twice: first to learn which storages it declares (nothing allocated),
    then, once every storage is found with its declared size inside the file, for real."""
    buffer = _file_buffer(path, size)
    stream = io.BytesIO(buffer) if isinstance(buffer, bytes) else buffer
    stream.seek(0)

    def small_pickle(what: str):
        try:
            return RestrictedUnpickler(stream, max_bytes=size).load()
        except (KosmosGError, pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise _Malformed(f"its {what} is unreadable ({type(exc).__name__})") from None

    if RestrictedUnpickler(stream, max_bytes=size).load() != _LEGACY_MAGIC:  # not a torch file: "damaged" below
        raise pickle.UnpicklingError("neither a torch zip archive nor a legacy torch file (no magic number)")
    if small_pickle("protocol version") != _LEGACY_PROTOCOL:
        raise _Malformed("its legacy protocol version is not torch's")
    sys_info = small_pickle("system information")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise CheckpointError(f"{path} was saved on a big-endian machine or lacks torch's system information")
    main_start = stream.tell()
    declared: dict[str, tuple[torch.dtype, int]] = {}
    real: dict[str, torch.Tensor] | None = None

    def storage(data: tuple) -> _Storage:
        if len(data) != 5:
            raise _Malformed(f"a legacy storage id has {len(data)} fields instead of 5")
        storage_type, key, _location, numel, view = data
        dtype = _storage_type(storage_type).dtype
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _Malformed("a storage id has a non-text key or a negative size")
        if declared.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise _Malformed(f"storage {key[:40]!r} is declared twice with different sizes")
        nbytes, data_tensor = numel * dtype.itemsize, None if real is None else real[key]
        if real is None and not any(k == key for k in counted):
            counted.append(key)
            current.storage_bytes += nbytes
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and _is_int(view[1]) and _is_int(view[2])
                    and 0 <= view[1] and 0 <= view[2] and view[1] + view[2] <= numel):
                raise _Malformed(f"a view of storage {key[:40]!r} lies outside it")
            begin, nbytes = view[1] * dtype.itemsize, view[2] * dtype.itemsize
            if data_tensor is not None:
                data_tensor = data_tensor[begin : begin + nbytes]
        return _Storage(dtype, nbytes, data_tensor)

    counted: list[str] = []
    current = RestrictedUnpickler(stream, storage_loader=storage, max_bytes=size)
    current.load()  # sizing pass: storages are meta, tensors checked against declared sizes
    keys = small_pickle("list of storage keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or sorted(set(keys)) != sorted(declared):
        raise _Malformed("its list of storage keys does not match the storages the pickle uses")
    offsets: dict[str, int] = {}
    position = stream.tell()
    for key in keys:
        dtype, numel = declared[key]
        header = bytes(buffer[position : position + 8])
        if len(header) != 8 or int.from_bytes(header, "little", signed=True) != numel:
            raise CheckpointError(f"storage {key[:40]!r} should hold {numel:,} values but the file says otherwise "
                                  "or ends first: the file is truncated or damaged")
        offsets[key] = position + 8
        position += 8 + numel * dtype.itemsize
        if position > size:
            raise CheckpointError(f"storage {key[:40]!r} runs past the end of the file: it is truncated")
    real = {}
    for key, start in offsets.items():
        dtype, numel = declared[key]
        real[key] = torch.empty(numel * dtype.itemsize, dtype=torch.uint8)
        real[key].numpy()[:] = memoryview(buffer)[start : start + numel * dtype.itemsize]
    stream.seek(main_start)
    total = current.storage_bytes
    current = RestrictedUnpickler(stream, storage_loader=storage, max_bytes=size)
    current.storage_bytes = total
    return current.load()


def restricted_torch_load(path: str | os.PathLike, mmap: bool = True) -> Any:
    """Read a torch checkpoint (zip or legacy format) onto the CPU through :class:`RestrictedUnpickler`.

    Zip-format files are memory-mapped, so tensors are read from disk only when touched.
    Raises :class:`RefusedPickleError` (nothing executed) or :class:`CheckpointError`.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if zipfile.is_zipfile(path):
            return _load_zip(path, size, mmap)
        return _load_legacy(path, size)
    except RefusedPickleError as exc:
        raise RefusedPickleError(f"{path}: {exc}") from None
    except _Malformed as exc:
        raise CheckpointError(f"could not read checkpoint {path}: {exc}. It is damaged or crafted; download or "
                              "copy it again.") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except KosmosGError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure of a hostile file is "damaged", one line
        raise CheckpointError(damaged_file_message(path, exc)) from None


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
