"""Retrieval index: image embeddings + where the images are, in our own safetensors format.

GILL retrieves by cosine similarity between the [IMG0] retrieval embedding and the
``visual_fc`` embeddings of candidate images, scaled by the learned ``exp(logit_scale)``.
The index stores the raw (unnormalised) embeddings, as the official CC3M file does, and the
paths in the safetensors metadata. The official ``cc3m_embeddings_urls.npy`` is a pickle: it is
imported through the restricted unpickler, never loaded with ``pickle``/``numpy`` directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..safe_pickle import RefusedPickleError, RestrictedUnpickler, damaged_file_message

INDEX_FORMAT = "kosmosg-gill-index/1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class RetrievalIndex:
    embeddings: torch.Tensor  # (N, E) float32, unnormalised
    paths: list[str]  # file paths or URLs

    def __post_init__(self):
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.paths):
            raise CheckpointError(
                f"retrieval index has {tuple(self.embeddings.shape)} embeddings for {len(self.paths)} paths."
            )

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
        return [(self.paths[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        save_file({"embeddings": self.embeddings.float().contiguous()}, path,
                  metadata={"format": INDEX_FORMAT, "paths": json.dumps(self.paths)})

    @classmethod
    def load(cls, path: str) -> "RetrievalIndex":
        from safetensors import safe_open

        if not os.path.isfile(path):
            raise CheckpointError(f"retrieval index not found: {path}")
        try:
            with safe_open(path, "pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != INDEX_FORMAT:
                    raise CheckpointError(
                        f"{path} is not a GILL retrieval index made by kosmosg_core (build one with "
                        "`python -m kosmosg_core gill-index build FOLDER --out FILE`)."
                    )
                return cls(handle.get_tensor("embeddings"), json.loads(metadata["paths"]))
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(damaged_file_message(path, exc)) from None

    @classmethod
    def import_official(cls, path: str) -> "RetrievalIndex":
        """``{'paths': [...], 'embeddings': [...]}`` pickles such as ``cc3m_embeddings_urls.npy``."""
        try:
            with open(path, "rb") as handle:
                data = RestrictedUnpickler(handle).load()
        except RefusedPickleError as exc:
            raise RefusedPickleError(f"{path}: {exc}") from None
        except FileNotFoundError:
            raise CheckpointError(f"embeddings file not found: {path}") from None
        except Exception as exc:
            raise CheckpointError(damaged_file_message(path, exc)) from None
        if not isinstance(data, dict) or "paths" not in data or "embeddings" not in data:
            raise CheckpointError(f"{path} is not GILL's embeddings file (expected a dict with 'paths' and 'embeddings').")
        vectors = [np.asarray(v, dtype=np.float32).reshape(-1) for v in data["embeddings"]]
        return cls(torch.from_numpy(np.stack(vectors)) if vectors else torch.zeros(0, 0), [str(p) for p in data["paths"]])


def image_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise CheckpointError(f"image folder not found: {folder}")
    found = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        raise CheckpointError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return found


@torch.inference_mode()
def build_index(gill, folder: str, batch_size: int = 16,
                progress: Callable[[int, int], None] | None = None) -> RetrievalIndex:
    """Embed every image under ``folder`` with GILL's ``visual_fc`` on CLIP's pooled feature."""
    from ..image_processing import load_image_file

    paths = image_files(folder)
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = [load_image_file(p) for p in paths[start : start + batch_size]]
        chunks.append(gill.heads.retrieval_image_embeddings(gill.image_features(batch)).float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    return RetrievalIndex(torch.cat(chunks), [os.path.abspath(p) for p in paths])
