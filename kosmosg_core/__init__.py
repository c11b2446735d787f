"""kosmosg_core: Kosmos-G and GILL as a library that imports without ComfyUI.

    from kosmosg_core import load_kosmosg
    encoder = load_kosmosg("checkpoint_final.pt")          # tokenizer files beside it
    out = encoder.encode("<i> wearing <i>", images=[dog, hat])
    out.cond, out.uncond                                    # (1, 77, 768) each

The names below are imported on first use, so ``python -m kosmosg_core`` can refuse a bad argument
(and the errors module can be imported) without loading torch.
"""

from __future__ import annotations

import importlib

from .errors import CheckpointError, ImageError, KosmosGError, PromptError, RefusedPickleError, TokenizerError

_LAZY = {
    "Checkpoint": ".kosmosg.checkpoint",
    "open_checkpoint": ".kosmosg.checkpoint",
    "EncodeOutput": ".kosmosg.encoder",
    "KosmosGEncoder": ".kosmosg.encoder",
    "load_kosmosg": ".kosmosg.loading",
    "KosmosGTokenizer": ".kosmosg.tokenizer",
}

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "EncodeOutput",
    "ImageError",
    "KosmosGEncoder",
    "KosmosGError",
    "KosmosGTokenizer",
    "PromptError",
    "RefusedPickleError",
    "TokenizerError",
    "load_kosmosg",
    "open_checkpoint",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
