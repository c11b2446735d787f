"""kosmosg_core: Kosmos-G (and, later, GILL) as a library that imports without ComfyUI.

    from kosmosg_core import load_kosmosg
    encoder = load_kosmosg("checkpoint_final.pt")          # tokenizer files beside it
    out = encoder.encode("<i> wearing <i>", images=[dog, hat])
    out.cond, out.uncond                                    # (1, 77, 768) each
"""

from .checkpoint import Checkpoint, open_checkpoint
from .encoder import EncodeOutput, KosmosGEncoder
from .errors import CheckpointError, ImageError, KosmosGError, PromptError, RefusedPickleError, TokenizerError
from .loading import load_kosmosg
from .tokenizer import KosmosGTokenizer

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
