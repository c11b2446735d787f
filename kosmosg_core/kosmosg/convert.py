"""Official ``.pt`` -> ``.safetensors``, streamed one tensor at a time.

The header is computed from shapes alone, then each tensor is read from the memory-mapped
source and written straight out, so at most one tensor is ever held twice. Only the keys the
encoder uses are kept (the tied output projection, dead buffers, the frozen CLIP text encoder
and SD U-Net/VAE copies are dropped); dtypes are kept, so outputs are bit-identical to the
``.pt``. The tokenizer is embedded as two uint8 tensors so the file is self-contained.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

from .checkpoint import (
    CONVERTED_FORMAT,
    DICT_TENSOR,
    SPM_TENSOR,
    TORCH_TO_SAFETENSORS,
    Checkpoint,
    module_key,
    open_checkpoint,
)
from .config import KosmosGConfig
from ..errors import CheckpointError, TokenizerError
from ..safe_files import atomic_open, refuse_input_as_output, regular_file, same_file
from .tokenizer import DICT_FILENAME, SPM_FILENAME, KosmosGTokenizer, resolve_tokenizer, tokenizer_search_dirs


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def write_safetensors(path: str, shapes: dict, dtypes: dict, read, metadata: dict[str, str]) -> int:
    """Write tensors named in ``shapes`` (in order), fetching each with ``read(name)``.

    Written through a temporary file renamed over ``path`` at the end (``safe_files.atomic_open``), so an
    interrupted run never leaves a file that looks complete. Returns the number of bytes written.
    """
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, shape in shapes.items():
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtypes[name]).element_size()
        header[name] = {"dtype": TORCH_TO_SAFETENSORS[dtypes[name]], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with atomic_open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for name in shapes:
            data = _tensor_bytes(read(name))
            if data.nbytes != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                raise CheckpointError(f"tensor {name} changed size while converting")
            out.write(data)
    return 8 + len(encoded) + offset


def convert(src: str, dst: str, tokenizer: str | None = None, embed_tokenizer: bool = True) -> dict:
    """Convert an official Kosmos-G checkpoint; returns a summary for the CLI to print."""
    src = regular_file(src, "checkpoint file", CheckpointError)
    inputs = [src] + [os.path.join(folder, name) for folder in tokenizer_search_dirs(src, [tokenizer] if tokenizer else [])
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
        tensors[SPM_TENSOR] = torch.from_numpy(np.frombuffer(tok.spm_model_bytes, dtype=np.uint8).copy())
        tensors[DICT_TENSOR] = torch.from_numpy(np.frombuffer(tok.dict_txt.encode("utf-8"), dtype=np.uint8).copy())
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
