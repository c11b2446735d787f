"""The compute dtypes the pack offers, named once: the CLI choices, the loaders, evaluation and the
ComfyUI nodes read them from here. Importing this module does not import torch."""

from __future__ import annotations

# name -> attribute of torch
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DTYPE_NAMES = list(DTYPES)


def parse_dtype(dtype):
    """``"fp32"``/``"fp16"``/``"bf16"`` (or a ``torch.dtype``, returned as is) -> ``torch.dtype``."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, DTYPES[dtype])
