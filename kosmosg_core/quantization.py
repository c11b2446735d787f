"""Weight-only int8 for the Kosmos-G encoder, through torchao (PyTorch's own quantization library).

Every ``nn.Linear`` of the MLLM, vision tower, connector and AlignerNet keeps its weight as int8
with one scale per output row; activations stay in the model's dtype, so LayerNorm, softmax and
the fp32 GELU of the official code are untouched. Embedding tables stay in the model's dtype.
torchao is optional: only this option needs it.
"""

from __future__ import annotations

import logging

import torch

from .errors import KosmosGError

QUANTIZATIONS = ("none", "int8")


def import_torchao():
    quiet = logging.getLogger("torchao")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it reports CUDA-only kernels it cannot load on CPU machines
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise KosmosGError("int8 quantization needs torchao: pip install torchao (into ComfyUI's Python).") from None
    finally:
        quiet.setLevel(level)
    return Int8WeightOnlyConfig, quantize_


def quantize_weights(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Quantize ``model`` in place (``mode``: none | int8) and return it."""
    if mode not in QUANTIZATIONS:
        raise KosmosGError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {mode!r}")
    if mode == "none":
        return model
    config, quantize_ = import_torchao()
    quantize_(model, config(), filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear))
    return model


def resident_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights really occupy, looking inside tensor subclasses (int8 data + scales)."""

    def size(tensor: torch.Tensor) -> int:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in names)
        return tensor.numel() * tensor.element_size()

    # parameters() already skips tied duplicates; .data unwraps the Parameter around a subclass
    return sum(size(p.data) for p in model.parameters()) + sum(size(b) for b in model.buffers())
