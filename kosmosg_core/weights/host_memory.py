"""Fresh CPU memory for weights, and casting into it.

Filling 7.5 GB of fresh fp32 weights costs more in page faults than in the cast itself: Linux
hands out fresh memory 4 KB at a time, each page zeroed on its first touch. Asking for 2 MB pages
(``madvise(MADV_HUGEPAGE)``, honoured when transparent huge pages are ``madvise`` or ``always``)
before the first touch more than halves the cost of a cast load. Elsewhere it is a no-op.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import threading

import torch

PAGE = mmap.PAGESIZE
HUGE_PAGE = 2 << 20
_STAGING_ELEMENTS = 1 << 18  # fp16 -> bf16 through fp32 in cache-sized pieces: twice as fast as direct


def _libc(name: str, argtypes: list):
    """A libc function on Linux (None elsewhere, or on a libc without it, e.g. musl's malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


_MADVISE = (_libc("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
            if hasattr(mmap, "MADV_HUGEPAGE") else None)
_MALLOC_TRIM = _libc("malloc_trim", [ctypes.c_size_t])
_local = threading.local()


def inner_pages(start: int, nbytes: int) -> tuple[int, int]:
    """The page-aligned part of ``[start, start + nbytes)``: advice never touches a neighbour's page."""
    return -(-start // PAGE) * PAGE, (start + nbytes) // PAGE * PAGE


def empty_weight(shape, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty`` on the CPU, asking for huge pages when it is big enough to use them.

    The advice is a hint for the pages inside the tensor; a refusal only means 4 KB pages."""
    tensor = torch.empty(shape, dtype=dtype)
    nbytes = tensor.numel() * tensor.element_size()
    if _MADVISE is not None and nbytes >= 2 * HUGE_PAGE:
        start, end = inner_pages(tensor.data_ptr(), nbytes)
        _MADVISE(start, end - start, mmap.MADV_HUGEPAGE)
    return tensor


def return_freed_memory() -> None:
    """Hand the allocator's free pages back to the OS. Quantizing layer by layer frees a
    full-precision weight and keeps its smaller int8 copy, again and again; glibc keeps the freed
    pages between the int8 copies, and resident memory drifts to 1.7x the int8 model unless they
    are returned as it goes (measured at the real size; with this, 1.02x)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def cast_into(out: torch.Tensor, source: torch.Tensor) -> None:
    """``out.copy_(source)`` for same-sized tensors of any float dtypes, at memory speed."""
    out, source = out.view(-1), source.reshape(-1)
    if not (source.dtype == torch.float16 and out.dtype == torch.bfloat16):
        out.copy_(source)
        return
    if not hasattr(_local, "staging"):
        _local.staging = torch.empty(_STAGING_ELEMENTS, dtype=torch.float32)
    staging = _local.staging
    for start in range(0, out.numel(), _STAGING_ELEMENTS):
        piece = source[start : start + _STAGING_ELEMENTS]
        out[start : start + piece.numel()].copy_(staging[: piece.numel()].copy_(piece))
