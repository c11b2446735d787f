"""GILL (Koh et al., NeurIPS 2023): a frozen OPT with CLIP input and 8 [IMG] tokens whose
hidden states become SD 1.5 conditioning, a retrieval embedding and a generate/retrieve choice."""

from .loading import load_gill
from .pipeline import GILL, Generation, ImageSlot

__all__ = ["GILL", "Generation", "ImageSlot", "load_gill"]
