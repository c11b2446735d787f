"""Retrieval index: image embeddings + where the images are, in our own safetensors format.

GILL retrieves by cosine similarity between the [IMG0] retrieval embedding and the
``visual_fc`` embeddings of candidate images, scaled by the learned ``exp(logit_scale)``.
The index stores the raw (unnormalised) embeddings, as the official CC3M file does, and the
paths in the safetensors metadata. The official ``cc3m_embeddings_urls.npy`` is a pickle: it is
imported through the restricted unpickler, never loaded with ``pickle``/``numpy`` directly.

Hostile files: only regular files are opened (a FIFO would block forever); the safetensors header
is read and checked (sizes against the file) before the embeddings are; an index whose embeddings
hold NaN or infinity (which would make every score NaN) is refused; building from a folder skips,
and names, entries that are not regular files or not readable images.
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ImageError
from ..safe_files import atomic_write_with, regular_file
from ..weights.safe_pickle import RefusedPickleError, RestrictedUnpickler, damaged_file_message

INDEX_FORMAT = "kosmosg-gill-index/1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_HEADER_BYTES = 1 << 30  # the header holds every path as JSON: CC3M's 3.3M URLs are ~300 MB
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
_FINITE_CHUNK_ROWS = 1 << 16


def _refuse_non_finite(embeddings: torch.Tensor, source: str) -> None:
    """NaN/inf embeddings make every cosine score NaN; found in chunks (no N x E mask at once)."""
    for start in range(0, embeddings.shape[0], _FINITE_CHUNK_ROWS):
        chunk = embeddings[start : start + _FINITE_CHUNK_ROWS]
        if not torch.isfinite(chunk).all():
            row = start + int((~torch.isfinite(chunk)).any(dim=-1).nonzero()[0, 0])
            raise CheckpointError(f"{source} holds NaN or infinite embeddings (first at row {row}): it is damaged; "
                                  "rebuild it with `python -m kosmosg_core gill-index build`.")


def _read_index_header(path: str) -> tuple[dict, int]:
    """The safetensors header of an index, checked against the file before any tensor is read."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(damaged_file_message(path, EOFError("shorter than a safetensors header")))
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path} declares a {length:,}-byte header but holds {size:,} bytes: it is not a "
                                  "GILL retrieval index (or it is truncated).")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path} is not a GILL retrieval index made by kosmosg_core (its header is not "
                              "safetensors JSON).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a GILL retrieval index made by kosmosg_core.")
    return header, size - 8 - length


def _check_index_header(path: str, header: dict, data_bytes: int) -> list[str]:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != INDEX_FORMAT:
        raise CheckpointError(
            f"{path} is not a GILL retrieval index made by kosmosg_core (build one with "
            "`python -m kosmosg_core gill-index build FOLDER --out FILE`)."
        )
    entry = header.get("embeddings")
    shape = entry.get("shape") if isinstance(entry, dict) else None
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if (not isinstance(shape, list) or len(shape) != 2 or not all(type(n) is int and n >= 0 for n in shape)
            or entry.get("dtype") not in _DTYPE_BYTES or not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(n) is int and n >= 0 for n in offsets)):
        raise CheckpointError(f"{path}: the index's 'embeddings' entry is missing or malformed; rebuild the index.")
    need = math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]
    if offsets[1] - offsets[0] != need or offsets[1] > data_bytes:
        raise CheckpointError(f"{path}: the index declares {shape[0]}x{shape[1]} {entry['dtype']} embeddings "
                              f"({need:,} bytes) but the file holds {data_bytes:,} bytes of data: it is damaged.")
    try:
        paths = json.loads(metadata.get("paths", ""))
    except ValueError:
        paths = None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise CheckpointError(f"{path}: the index's list of image paths is missing or malformed; rebuild the index.")
    if len(paths) != shape[0]:
        raise CheckpointError(f"{path}: the index has {shape[0]} embeddings for {len(paths)} paths; rebuild it.")
    return paths


@dataclass
class RetrievalIndex:
    embeddings: torch.Tensor  # (N, E) float32, unnormalised
    paths: list[str]  # file paths or URLs
    skipped: list[str] = field(default_factory=list, compare=False)  # build: files left out, with why

    def __post_init__(self):
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.paths):
            raise CheckpointError(
                f"retrieval index has {tuple(self.embeddings.shape)} embeddings for {len(self.paths)} paths."
            )
        _refuse_non_finite(self.embeddings, "the retrieval index")

    def scores(self, ret_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        """(1, N) = exp(logit_scale) * cos(image embedding, retrieval embedding)."""
        if ret_emb.shape[-1] != self.embeddings.shape[1]:
            raise CheckpointError(
                f"the index holds {self.embeddings.shape[1]}-d embeddings but this GILL retrieves with "
                f"{ret_emb.shape[-1]}-d ones: build the index with the same GILL checkpoint."
            )
        images = F.normalize(self.embeddings.float(), dim=-1).to(ret_emb.device)
        return logit_scale.float().exp() * (F.normalize(ret_emb.float(), dim=-1) @ images.T)

    def search(self, ret_emb: torch.Tensor, logit_scale: torch.Tensor, k: int = 1) -> list[tuple[str, float]]:
        scores = self.scores(ret_emb, logit_scale)[0]
        top = torch.topk(scores, min(k, scores.shape[0]))
        return [(self.paths[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        tensors = {"embeddings": self.embeddings.float().contiguous()}
        metadata = {"format": INDEX_FORMAT, "paths": json.dumps(self.paths)}
        atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))  # temp, then rename

    @classmethod
    def load(cls, path: str) -> RetrievalIndex:
        from safetensors import safe_open

        path = regular_file(path, "retrieval index", CheckpointError)
        header, data_bytes = _read_index_header(path)
        paths = _check_index_header(path, header, data_bytes)
        try:
            with safe_open(path, "pt") as handle:
                embeddings = handle.get_tensor("embeddings")
        except Exception as exc:
            raise CheckpointError(damaged_file_message(path, exc)) from None
        return cls._named(path, embeddings, paths)

    @classmethod
    def import_official(cls, path: str) -> RetrievalIndex:
        """``{'paths': [...], 'embeddings': [...]}`` pickles such as ``cc3m_embeddings_urls.npy``."""
        path = regular_file(path, "embeddings file", CheckpointError)  # a FIFO would block the open forever
        try:
            with open(path, "rb") as handle:
                data = RestrictedUnpickler(handle).load()
        except RefusedPickleError as exc:
            raise RefusedPickleError(f"{path}: {exc}") from None
        except Exception as exc:
            raise CheckpointError(damaged_file_message(path, exc)) from None
        if not isinstance(data, dict) or "paths" not in data or "embeddings" not in data:
            raise CheckpointError(f"{path} is not GILL's embeddings file "
                                  "(expected a dict with 'paths' and 'embeddings').")
        paths, rows = data["paths"], data["embeddings"]
        if not isinstance(paths, (list, tuple)) or not isinstance(rows, (list, tuple, np.ndarray)):
            raise CheckpointError(f"{path}: 'paths' and 'embeddings' must be lists; it is not GILL's embeddings file.")
        try:
            vectors = [np.asarray(v, dtype=np.float32).reshape(-1) for v in rows]
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: an embedding is not a vector of numbers ({exc}).") from None
        widths = sorted({v.shape[0] for v in vectors})
        if len(widths) > 1:
            raise CheckpointError(f"{path}: the embeddings have different widths ({widths[:4]}); the file is damaged.")
        if len(vectors) != len(paths):
            raise CheckpointError(f"{path} has {len(vectors)} embeddings for {len(paths)} paths; the file is damaged.")
        embeddings = torch.from_numpy(np.stack(vectors)) if vectors else torch.zeros(0, 0)
        return cls._named(path, embeddings, [str(p) for p in paths])

    @classmethod
    def _named(cls, path: str, embeddings: torch.Tensor, paths: list[str]) -> RetrievalIndex:
        try:
            return cls(embeddings, paths)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None


def image_files(folder: str, skipped: list[str] | None = None) -> list[str]:
    """Regular files with an image extension under ``folder`` (links followed to files, not to
    folders); FIFOs, devices and sockets are never opened, only listed in ``skipped``."""
    if not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise CheckpointError(f"{folder} is not a folder: give the folder of images to index.")
        raise CheckpointError(f"image folder not found: {folder}")
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            try:
                regular_file(path, "image file", ImageError)
            except ImageError as exc:
                if skipped is not None:
                    skipped.append(str(exc))
                continue
            found.append(path)
    if not found:
        raise CheckpointError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return sorted(found)


@torch.inference_mode()
def build_index(gill, folder: str, batch_size: int = 16,
                progress: Callable[[int, int], None] | None = None) -> RetrievalIndex:
    """Embed every image under ``folder`` with GILL's ``visual_fc`` on CLIP's pooled feature."""
    from ..image_processing import load_image_file

    skipped: list[str] = []
    paths = image_files(folder, skipped)
    chunks, kept = [], []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            try:
                batch.append(load_image_file(path))
            except ImageError as exc:  # one bad file does not sink a folder of thousands
                skipped.append(str(exc))
                continue
            kept.append(path)
        if batch:
            chunks.append(gill.heads.retrieval_image_embeddings(gill.image_features(batch)).float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} file(s) in {folder}: " + "; ".join(skipped[:5])
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    if not kept:
        raise CheckpointError(f"no readable images in {folder} ({len(skipped)} skipped: {'; '.join(skipped[:3])}).")
    return RetrievalIndex(torch.cat(chunks), [os.path.abspath(p) for p in kept], skipped)
