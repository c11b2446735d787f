"""Reading checkpoint files: official fairseq ``.pt`` and our converted ``.safetensors``.

This module knows file formats and key names; it builds no model. It tells a Kosmos-G
checkpoint from the other files a user may pick by mistake (SD checkpoints, ``ViT-L-14-sd.pt``,
GILL files, a stage-1 file) by their keys, never by their names.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError, TokenizerError
from ..safe_files import regular_file
from ..weights.host_memory import PAGE, cast_into, inner_pages
from ..weights.keys import wrong_family
from ..weights.safe_pickle import damaged_file_message, restricted_torch_load
from ..weights.safetensors_io import SAFETENSORS_DTYPES
from .config import ALIGNER, CONNECTOR, TEXT, VISION

CONVERTED_FORMAT = "kosmosg-core/1"
TOKENIZER_PREFIX = "tokenizer."  # converted files may embed the tokenizer as uint8 tensors
SPM_TENSOR = TOKENIZER_PREFIX + "sentencepiece_model"
DICT_TENSOR = TOKENIZER_PREFIX + "dict_txt"

KIND_FINAL = "final"  # MLLM + AlignerNet M (checkpoint_final.pt)
KIND_STAGE2 = "stage2"  # MLLM + AlignerNet M and N (+ frozen CLIP text) (checkpoint_stage2.pt)
KIND_STAGE1 = "stage1"  # MLLM only (checkpoint_stage1.pt)

_DEAD_TEXT_KEYS = ("embed_positions._float_tensor", "self_attn_sope.scale")
_VISION_RENAMES = (
    ("class_embedding", "embeddings.class_embedding"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("conv1.", "embeddings.patch_embedding."),
    ("ln_pre.", "pre_layrnorm."),
    ("ln_post.", "post_layernorm."),
    ("transformer.resblocks.", "encoder.layers."),
)
_VISION_LAYER_RENAMES = (
    (".ts_attn.", ".self_attn."),
    (".ln_1.", ".layer_norm1."),
    (".ln_2.", ".layer_norm2."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)


def module_key(official: str) -> str | None:
    """Official key -> our module's parameter name (transformers Kosmos-2 naming for the MLLM).

    ``None`` for keys the encoder does not use: dead buffers, the tied output projection, the
    frozen CLIP text encoder of stage 2, and the SD U-Net/VAE copies of the final checkpoint.
    """
    if official.startswith(TEXT):
        rest = official[len(TEXT) :]
        if rest in _DEAD_TEXT_KEYS or rest.startswith("output_projection."):
            return None
        return "text_model.model." + rest
    if official.startswith(VISION):
        rest = official[len(VISION) :]
        for old, new in _VISION_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        for old, new in _VISION_LAYER_RENAMES:
            rest = rest.replace(old, new)
        return "vision_model.model." + rest
    if official.startswith(CONNECTOR):
        return "image_to_text_projection." + official[len(CONNECTOR) :]
    if official.startswith(ALIGNER) and not official.startswith(ALIGNER + "clip_encoder."):
        return official
    return None


def official_key(name: str) -> str:
    """Inverse of :func:`module_key` for the keys our model has (used to write official files)."""
    if name.startswith("text_model.model."):
        return TEXT + name[len("text_model.model.") :]
    if name.startswith("vision_model.model."):
        rest = name[len("vision_model.model.") :]
        for old, new in _VISION_RENAMES:
            if rest.startswith(new):
                rest = old + rest[len(new) :]
                break
        for old, new in _VISION_LAYER_RENAMES:
            rest = rest.replace(new, old)
        return VISION + rest
    if name.startswith("image_to_text_projection."):
        return CONNECTOR + name[len("image_to_text_projection.") :]
    return name





def classify(keys: list[str], path: str) -> str:
    """``final`` / ``stage2`` / ``stage1``, or a :class:`CheckpointError` naming what the file is."""
    is_kosmos = any(k.startswith(TEXT) for k in keys) and any(k.startswith(VISION) for k in keys)
    if not is_kosmos:
        family = wrong_family(keys)
        prefixes = sorted({k.split(".")[0] for k in keys})[:8]
        reason = family or f"its weights are named {', '.join(prefixes) or '(nothing)'}.*"
        raise CheckpointError(
            f"{path} is not a Kosmos-G checkpoint: {reason}. Expected the official Kosmos-G "
            f"checkpoint_final.pt (keys {TEXT}*, {VISION}*, {CONNECTOR}*, {ALIGNER}*) or a file "
            "converted from it with `python -m kosmosg_core convert`."
        )
    if not any(k.startswith(CONNECTOR) for k in keys):
        raise CheckpointError(f"{path} has the MLLM but no image connector ({CONNECTOR}*); the file is incomplete.")
    if ALIGNER + "encoder_query" not in keys:
        return KIND_STAGE1
    if ALIGNER + "decoder_query" in keys or any(k.startswith(ALIGNER + "clip_encoder.") for k in keys):
        return KIND_STAGE2
    return KIND_FINAL


@dataclass
class Checkpoint:
    """An opened checkpoint: lazily readable tensors under their official names."""

    path: str
    format: str  # "fairseq-pt" | "safetensors"
    kind: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    tokenizer_files: tuple[bytes, str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    _state: Mapping[str, torch.Tensor] | None = None
    _safe: object | None = None
    _offsets: dict[str, int] | None = None  # safetensors: absolute byte offset of each tensor
    source_path: str | None = None  # for a cached conversion: the official file it came from
    _map: MappedFile | None = None

    def tensor(self, key: str) -> torch.Tensor:
        if self._safe is not None:
            return self._safe.get_tensor(key)
        return self._state[key]

    def read_into(self, key: str, out: torch.Tensor, reader: ChunkedReader | None) -> None:
        """Fill the CPU tensor ``out`` (any float dtype) with ``key``, casting on the way.

        From a safetensors file the source is the mapped file, released once copied, so peak memory
        stays at the model's own size; ``reader`` (from :meth:`reader`) serves tensors whose offset
        is misaligned for their dtype. Pickled checkpoints pass ``None``.
        """
        if self._offsets is None:
            cast_into(out, self._state[key])
            return
        source = self.mapped(key, keep=False)
        if source is None:
            reader.read(self._offsets[key], self.dtypes[key], out)
            return
        cast_into(out, source)
        self._map.release(self._offsets[key], source.numel() * source.element_size())

    def keys(self) -> list[str]:
        return list(self.shapes)

    def weight_bytes(self, keys: list[str] | None = None) -> int:
        keys = self.keys() if keys is None else keys
        return sum(
            torch.Size(self.shapes[k]).numel() * _itemsize(self.dtypes[k]) for k in keys
        )

    def items(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for key in keys:
            yield key, self.tensor(key)

    def mapped(self, key: str, keep: bool = True) -> torch.Tensor | None:
        """The tensor as a copy-on-write view of the file (safetensors only): nothing is copied,
        the pages are the page cache's. None where the file cannot give one."""
        if self._offsets is None:
            return None
        if self._map is None:
            self._map = MappedFile(self.path)
        return self._map.tensor(self._offsets[key], self.dtypes[key], self.shapes[key], keep=keep)

    def make_resident(self) -> None:
        if self._map is not None:
            self._map.make_resident()

    def reader(self) -> ChunkedReader | None:
        """One open reader for many ``read_into`` calls (None for pickles, which need none)."""
        return ChunkedReader(self.path) if self._offsets is not None else None

    def close(self) -> None:
        """Drop our handles; tensors already viewing the mapping keep it alive."""
        self._state = None
        self._safe = None
        self._map = None


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _state_dict_from_pickle(obj, path: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if "model" in obj and isinstance(obj["model"], Mapping):
            return obj["model"]  # fairseq: {"model": state_dict, "args", "cfg", ...}
        if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            return obj["state_dict"]  # lightning / open_clip / GILL style
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__} without weights under 'model' or 'state_dict'; expected "
        "the fairseq checkpoint dict of the Kosmos-G release (checkpoint_final.pt)."
    )


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open an official ``.pt`` or a ``.safetensors`` file without reading its weights yet."""
    path = os.fspath(path)
    if not os.path.exists(path):  # the README's troubleshooting table quotes this message
        raise CheckpointError(
            f"checkpoint file not found: {path}. Kosmos-G needs checkpoint_final.pt from the official release "
            "(see README, Models), with sentencepiece.bpe.model and dict.txt beside it."
        )
    path = regular_file(path, "checkpoint file", CheckpointError)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if _looks_like_safetensors(path, head):
        return _open_safetensors(path)
    obj = restricted_torch_load(path)
    state = _state_dict_from_pickle(obj, path)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    kind = classify(list(tensors), path)
    return Checkpoint(
        path=path,
        format="fairseq-pt",
        kind=kind,
        shapes={k: tuple(v.shape) for k, v in tensors.items()},
        dtypes={k: v.dtype for k, v in tensors.items()},
        _state=tensors,
    )


def _looks_like_safetensors(path: str, head: bytes) -> bool:
    if path.endswith(".safetensors"):
        return True
    # 8-byte little-endian header length followed by '{'
    return len(head) >= 9 and head[8:9] == b"{"


def _open_safetensors(path: str) -> Checkpoint:
    from safetensors import safe_open

    offsets, metadata, shapes, dtypes = _safetensors_offsets(path)  # every size checked before safetensors maps it
    keys = list(shapes)
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError for damaged headers
        raise CheckpointError(damaged_file_message(path, exc)) from None
    tokenizer = None
    if SPM_TENSOR in shapes and DICT_TENSOR in shapes:
        for name in (SPM_TENSOR, DICT_TENSOR):
            if dtypes[name] != torch.uint8 or len(shapes[name]) != 1 or shapes[name][0] > MAX_TOKENIZER_BYTES:
                raise CheckpointError(f"{path}: the embedded tokenizer tensor {name} is not a byte string of at "
                                      f"most {MAX_TOKENIZER_BYTES:,} bytes; the file is damaged or crafted.")
        spm = handle.get_tensor(SPM_TENSOR).numpy().tobytes()
        try:
            dict_txt = handle.get_tensor(DICT_TENSOR).numpy().tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{path}: the embedded dict.txt is not UTF-8 text (byte {exc.start}); the file is "
                                 "damaged or crafted. Convert the official checkpoint again.") from None
        tokenizer = (spm, dict_txt)
    weights = [k for k in keys if not k.startswith(TOKENIZER_PREFIX)]
    kind = classify(weights, path)
    return Checkpoint(
        path=path,
        format="safetensors",
        kind=kind,
        shapes={k: shapes[k] for k in weights},
        dtypes={k: dtypes[k] for k in weights},
        tokenizer_files=tokenizer,
        metadata=dict(metadata),
        _safe=handle,
        _offsets={k: offsets[k] for k in weights},
    )


MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit; a 7B model's header is ~100 KB
MAX_TOKENIZER_BYTES = 64 << 20


def _safetensors_offsets(path: str):
    """(absolute offset, metadata, shapes, dtypes) of a safetensors file, every entry checked against
    the file before anything is mapped or allocated: the header length against the file size, each
    dtype known, each byte range exactly its shape times its dtype size, inside the data section and
    overlapping no other."""

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"could not read checkpoint {path}: {reason}. It is damaged or not a safetensors "
                               "file; download or copy it again.")

    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(damaged_file_message(path, EOFError("shorter than a safetensors header")))
        header_len = int.from_bytes(head, "little")
        if header_len > min(MAX_HEADER_BYTES, size - 8) or header_len < 2:
            raise bad(f"its header claims {header_len:,} bytes in a {size:,}-byte file")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"its header is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("its __metadata__ is not a map of strings")
    start, data_size = 8 + header_len, size - 8 - header_len
    shapes, dtypes, offsets, ranges = {}, {}, {}, []
    for name, entry in header.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
            shown = entry.get("dtype") if isinstance(entry, dict) else type(entry).__name__
            raise bad(f"tensor {name[:80]!r} has dtype {str(shown)[:20]!r}, not one of {', '.join(SAFETENSORS_DTYPES)}")
        shape, span = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or len(shape) > 64 or not all(type(n) is int and n >= 0 for n in shape):
            raise bad(f"tensor {name[:80]!r} has shape {str(shape)[:80]}")
        if not isinstance(span, list) or len(span) != 2 or not all(type(n) is int for n in span) \
                or not 0 <= span[0] <= span[1] <= data_size:
            raise bad(f"tensor {name[:80]!r} has byte range {str(span)[:80]} outside the {data_size:,} data bytes")
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        if span[1] - span[0] != torch.Size(shape).numel() * _itemsize(dtype):
            raise bad(f"tensor {name[:80]!r} of shape {shape} needs {torch.Size(shape).numel() * _itemsize(dtype):,} "
                      f"bytes but its byte range holds {span[1] - span[0]:,}")
        shapes[name], dtypes[name], offsets[name] = tuple(shape), dtype, start + span[0]
        ranges.append((span[0], span[1], name))
    ranges.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(ranges):
        if begin < end:
            raise bad(f"tensors {first[:60]!r} and {second[:60]!r} overlap")
    return offsets, metadata, shapes, dtypes


class MappedFile:
    """A file mapped copy-on-write (``ACCESS_COPY``, portable): tensors in the file's own dtype
    are views of it, so loading costs page-table entries, not copies. A write to a weight copies
    just that page; the file itself never changes."""


    def __init__(self, path: str):
        with open(path, "rb") as handle:
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        self.kept: list[tuple[int, int]] = []  # byte ranges of the views handed out as weights

    def tensor(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...], keep: bool = True) -> torch.Tensor | None:
        """A view of the file; ``keep=False`` for a source read once and then released."""
        itemsize = _itemsize(dtype)
        if offset % itemsize:
            return None  # misaligned for this dtype: read it instead
        count = torch.Size(shape).numel()
        if keep:
            self.kept.append((offset, count * itemsize))
        return torch.frombuffer(self.map, dtype=dtype, offset=offset, count=count).view(shape)

    def release(self, offset: int, nbytes: int) -> None:
        """Drop this range's pages from the mapping once copied out (the page cache keeps them), so
        resident memory is the weights, not the weights plus the file. Pages shared with a
        neighbouring tensor are kept."""
        start, end = inner_pages(offset, nbytes)
        if end > start:
            self.map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def make_resident(self) -> None:
        """Touch one byte per page of the kept views (a read fault maps the cached page; nothing
        is copied). Released ranges stay out: they were copied into weights of another dtype."""
        whole = torch.frombuffer(self.map, dtype=torch.uint8)
        for offset, nbytes in self.kept:
            int(whole[offset // PAGE * PAGE : offset + nbytes : PAGE].sum())


class ChunkedReader:
    """Reads tensors out of one file with positional reads (``os.preadv``, no shared file offset,
    GIL released), so several threads can fill different tensors at once: directly into the
    destination when no cast is needed, else through a small per-thread buffer. Only tensors the
    file stores misaligned for their dtype need it; the others are cast from the mapping."""

    def __init__(self, path: str, chunk_bytes: int = 16 << 20):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.chunk_bytes = chunk_bytes
        self.local = threading.local()

    def read(self, offset: int, dtype: torch.dtype, out: torch.Tensor) -> None:
        flat = out.view(-1)
        if dtype == out.dtype:
            self._fill(flat.view(torch.uint8).numpy(), offset)
            return
        if not hasattr(self.local, "raw"):
            self.local.raw = torch.empty(self.chunk_bytes, dtype=torch.uint8)
        itemsize = _itemsize(dtype)
        per_chunk = self.chunk_bytes // itemsize
        for start in range(0, flat.numel(), per_chunk):
            count = min(per_chunk, flat.numel() - start)
            chunk = self.local.raw[: count * itemsize]
            self._fill(chunk.numpy(), offset + start * itemsize)
            cast_into(flat[start : start + count], chunk.view(dtype))

    def _fill(self, view, offset: int) -> None:
        memory = memoryview(view).cast("B")
        done = 0
        while done < len(memory):
            got = os.preadv(self.fd, [memory[done:]], offset + done)
            if not got:
                raise CheckpointError(f"{self.path} ended early: the file is truncated. Download or copy it again.")
            done += got

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tokenizer_tensors(tokenizer) -> dict[str, torch.Tensor]:
    """The tokenizer's two files as uint8 tensors, as a converted file carries them (``convert`` and
    the training export write them; :meth:`Checkpoint.tokenizer_files` reads them back)."""
    import numpy as np

    return {SPM_TENSOR: torch.from_numpy(np.frombuffer(tokenizer.spm_model_bytes, dtype=np.uint8).copy()),
            DICT_TENSOR: torch.from_numpy(np.frombuffer(tokenizer.dict_txt.encode("utf-8"), dtype=np.uint8).copy())}
