"""Official ``.pt`` -> ``.safetensors``, streamed one tensor at a time.

The header is computed from shapes alone, then each tensor is read from the memory-mapped
source and written straight out, so at most one tensor is ever held twice. Only the keys the
encoder uses are kept (the tied output projection, dead buffers, the frozen CLIP text encoder
and SD U-Net/VAE copies are dropped); dtypes are kept, so outputs are bit-identical to the
``.pt``. The tokenizer is embedded as two uint8 tensors so the file is self-contained.
"""

from __future__ import annotations

import os
import shutil

import torch

from ..errors import CheckpointError, TokenizerError
from ..safe_files import refuse_input_as_output, regular_file, same_file
from ..weights.safetensors_io import write_safetensors
from .checkpoint import CONVERTED_FORMAT, Checkpoint, module_key, open_checkpoint, tokenizer_tensors
from .config import KosmosGConfig
from .tokenizer import DICT_FILENAME, SPM_FILENAME, KosmosGTokenizer, resolve_tokenizer, tokenizer_search_dirs


def convert(src: str, dst: str, tokenizer: str | None = None, embed_tokenizer: bool = True) -> dict:
    """Convert an official Kosmos-G checkpoint; returns a summary for the CLI to print."""
    src = regular_file(src, "checkpoint file", CheckpointError)
    inputs = [src] + [os.path.join(folder, name)
                      for folder in tokenizer_search_dirs(src, [tokenizer] if tokenizer else [])
                      for name in (SPM_FILENAME, DICT_FILENAME) if os.path.isfile(os.path.join(folder, name))]
    if same_file(src, dst):
        raise CheckpointError(f"convert: source and destination are the same file ({dst}): writing it would destroy "
                              "the checkpoint. Choose another output path.")
    refuse_input_as_output(dst, inputs, "convert's destination")
    checkpoint = open_checkpoint(src)
    try:  # the sizes a load would build (contiguous layers, widths): a file that cannot load is not written
        KosmosGConfig.from_shapes(checkpoint.shapes)
    except CheckpointError as exc:
        raise CheckpointError(f"{src}: {exc}") from None
    tok = None
    if embed_tokenizer:
        try:
            tok = resolve_tokenizer(checkpoint, tokenizer)
        except TokenizerError:
            if tokenizer:  # asked for explicitly: the user wants to know it is wrong
                raise
    summary = write_converted(checkpoint, dst, tok)
    checkpoint.close()
    return {"src": src, **summary}


def write_converted(checkpoint: Checkpoint, dst: str, tok: KosmosGTokenizer | None = None,
                    dtype: torch.dtype | None = None) -> dict:
    """Stream an opened checkpoint's model weights (and optionally its tokenizer) to ``dst``;
    floating weights are cast to ``dtype`` when given (the load cache stores the loaded dtype)."""
    kept = [k for k in checkpoint.keys() if module_key(k) is not None]
    shapes = {k: checkpoint.shapes[k] for k in kept}
    dtypes = {k: dtype if dtype is not None and checkpoint.dtypes[k].is_floating_point else checkpoint.dtypes[k]
              for k in kept}
    tensors: dict[str, torch.Tensor] = {}
    if tok is not None:
        tensors.update(tokenizer_tensors(tok))
        for name, value in tensors.items():
            shapes[name], dtypes[name] = tuple(value.shape), value.dtype
    needed = sum(torch.Size(shapes[k]).numel() * torch.empty((), dtype=dtypes[k]).element_size() for k in kept)
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(dst)) or ".").free
    if free < needed * 1.05:
        raise CheckpointError(f"convert: {dst} needs {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free there.")
    metadata = {
        "format": CONVERTED_FORMAT,
        "kind": checkpoint.kind,
        "source": os.path.basename(checkpoint.path),
        "dropped_keys": str(len(checkpoint.keys()) - len(kept)),
    }
    written = write_safetensors(dst, shapes, dtypes,
                                lambda k: tensors[k] if k in tensors else checkpoint.tensor(k).to(dtypes[k]), metadata)
    return {"dst": dst, "kind": checkpoint.kind, "tensors": len(shapes), "bytes": written,
            "dropped_keys": int(metadata["dropped_keys"]), "tokenizer_embedded": tok is not None}
