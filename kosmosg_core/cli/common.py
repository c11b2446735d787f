"""What several subcommands share: writing result tensors, loading GILL from the three folder flags."""

from __future__ import annotations

import argparse

from ..errors import KosmosGError
from ..safe_files import atomic_write_with


def save_tensors(tensors: dict, path: str, metadata: dict) -> None:
    """float32 for floating tensors, contiguous CPU copies, safetensors; written temp-then-rename."""
    from safetensors.torch import save_file

    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_gill(args: argparse.Namespace):
    from ..gill import load_gill as load

    missing = [flag for flag in ("checkpoint", "llm", "vision") if not getattr(args, flag)]
    if missing:
        raise KosmosGError(f"GILL needs --{' --'.join(missing)}: the release folder, an OPT folder and a CLIP folder.")
    gill = load(args.checkpoint, args.llm, args.vision, dtype=args.dtype, device=args.device)
    if getattr(args, "index", None):
        from ..gill.retrieval import RetrievalIndex

        gill.index = RetrievalIndex.load(args.index)
    return gill
