"""Weight-only int8 for the Kosmos-G encoder, through torchao (PyTorch's own quantization library).

Every ``nn.Linear`` of the MLLM, vision tower, connector and AlignerNet keeps its weight as int8
with one scale per output row; activations stay in the model's dtype, so LayerNorm, softmax and
the fp32 GELU of the official code are untouched. Embedding tables stay in the model's dtype.
The loader quantizes each linear as soon as it has read it, so loading never holds the
full-precision model. torchao is optional: only this option needs it.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..errors import KosmosGError

QUANTIZATIONS = ("none", "int8")


@functools.cache  # the loader asks once per layer
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


def quantized_weight_names(model: torch.nn.Module, mode: str) -> set[str]:
    """The weights ``mode`` (none | int8) quantizes: those of every ``nn.Linear``. Checked before
    any weight is read, so a bad mode or a missing torchao costs nothing."""
    if mode not in QUANTIZATIONS:
        raise KosmosGError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {mode!r}")
    if mode == "none":
        return set()
    import_torchao()
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def quantize_linear(linear: torch.nn.Linear, weight: torch.Tensor, mode: str) -> None:
    """Give ``linear`` its full-precision ``weight`` and quantize it at once (the loader calls this
    per layer, so only a few full-precision weights are alive at any time)."""
    config, quantize_ = import_torchao()
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    quantize_(linear, config())


def resident_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights really occupy, looking inside tensor subclasses (int8 data + scales)."""

    def size(tensor: torch.Tensor) -> int:
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(size(getattr(tensor, name)) for name in names)
        return tensor.numel() * tensor.element_size()

    # parameters() already skips tied duplicates; .data unwraps the Parameter around a subclass
    return sum(size(p.data) for p in model.parameters()) + sum(size(b) for b in model.buffers())
