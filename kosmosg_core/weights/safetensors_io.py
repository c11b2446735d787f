"""safetensors written by streaming: the header from the names, shapes and dtypes, then each tensor
fetched and written in turn, so a multi-GB conversion never holds the whole state dict. Also the
format's dtype names (the checkpoint reader checks headers against them)."""

from __future__ import annotations

import json

import numpy as np
import torch

from ..errors import CheckpointError
from ..safe_files import atomic_open

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_SAFETENSORS = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
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
        header[name] = {"dtype": TORCH_TO_SAFETENSORS[dtypes[name]], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    with atomic_open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        for name in shapes:
            data = tensor_bytes(read(name))
            if data.nbytes != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                raise CheckpointError(f"tensor {name} changed size while converting")
            out.write(data)
    return 8 + len(encoded) + offset
