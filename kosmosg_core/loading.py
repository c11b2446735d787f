"""Checkpoint file -> ready :class:`KosmosGEncoder`, without a second copy of the weights.

The model is built on the ``meta`` device (no random init), then each tensor is read from the
memory-mapped file, cast to the target dtype and assigned, one at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from .checkpoint import KIND_STAGE1, KIND_STAGE2, Checkpoint, module_key, open_checkpoint
from .config import KosmosGConfig
from .encoder import KosmosGEncoder
from .errors import CheckpointError, TokenizerError
from .modeling_kosmosg import KosmosGModel
from .tokenizer import DICT_FILENAME, SPM_FILENAME, KosmosGTokenizer, find_tokenizer_dir

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def tokenizer_search_dirs(checkpoint_path: str, extra_dirs: list[str] = ()) -> list[str]:
    """The checkpoint's folder, its ``tokenizer/`` subfolder, then ``extra_dirs`` and theirs."""
    dirs = []
    for folder in [os.path.dirname(os.path.abspath(checkpoint_path)), *extra_dirs]:
        for candidate in (folder, os.path.join(folder, "tokenizer")):
            if candidate not in dirs:
                dirs.append(candidate)
    return dirs


def resolve_tokenizer(
    checkpoint: Checkpoint, tokenizer: str | KosmosGTokenizer | None, extra_dirs: list[str] = ()
) -> KosmosGTokenizer:
    """Explicit tokenizer, else the one embedded in a converted file, else files beside the checkpoint."""
    if isinstance(tokenizer, KosmosGTokenizer):
        return tokenizer
    if tokenizer:
        return KosmosGTokenizer.from_dir(tokenizer)
    if checkpoint.tokenizer_files is not None:
        spm, dict_txt = checkpoint.tokenizer_files
        return KosmosGTokenizer(spm, dict_txt, source=f"{checkpoint.path} (embedded)")
    searched = tokenizer_search_dirs(checkpoint.path, list(extra_dirs))
    found = find_tokenizer_dir(searched)
    if found is None:
        raise TokenizerError(
            f"no Kosmos-G tokenizer found for {checkpoint.path}. Looked for {SPM_FILENAME} and "
            f"{DICT_FILENAME} in: {'; '.join(searched)}; and inside the checkpoint (only converted "
            "files carry one). Put the two files from the Kosmos-G release (data/) beside the "
            "checkpoint, or pass the folder holding them (--tokenizer DIR)."
        )
    return KosmosGTokenizer.from_dir(found)


def build_model(
    checkpoint: Checkpoint,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> KosmosGModel:
    config = KosmosGConfig.from_shapes(checkpoint.shapes)
    with torch.device("meta"):
        model = KosmosGModel(config)
    expected = model.state_dict().keys()
    mapping = {}
    for key in checkpoint.keys():
        target = module_key(key)
        if target is not None and target in expected:
            mapping[target] = key
    missing = sorted(set(expected) - set(mapping))
    if missing:
        raise CheckpointError(
            f"{checkpoint.path} lacks {len(missing)} weight(s) the model needs, e.g. "
            f"{', '.join(missing[:4])}. The file is incomplete or from another model version."
        )
    total = len(mapping)
    state = {}
    for step, (target, key) in enumerate(mapping.items(), start=1):
        # .to() makes a new tensor, so the memory-mapped source page can be dropped right away
        state[target] = checkpoint.tensor(key).to(device=device, dtype=dtype, copy=True)
        if progress is not None:
            progress(step, total)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit together ({exc})") from None
    del state
    model.reset_non_persistent_buffers(device)
    return model.eval().requires_grad_(False)


def load_kosmosg(
    checkpoint: str | os.PathLike | Checkpoint,
    tokenizer: str | KosmosGTokenizer | None = None,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    allow_stage2: bool = True,
    tokenizer_dirs: list[str] = (),
) -> KosmosGEncoder:
    """Load a Kosmos-G checkpoint (official ``.pt`` or converted) into an encoder.

    ``tokenizer_dirs`` are searched (with their ``tokenizer/`` subfolders) after the checkpoint's
    own folder when neither ``tokenizer`` nor an embedded tokenizer is given.
    """
    opened = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    if opened.kind == KIND_STAGE1:
        raise CheckpointError(
            f"{opened.path} is a stage-1 Kosmos-G checkpoint (checkpoint_stage1.pt): it has the "
            "multimodal LLM but no AlignerNet, so it cannot make SD conditioning. Use checkpoint_final.pt."
        )
    if opened.kind == KIND_STAGE2:
        if not allow_stage2:
            raise CheckpointError(
                f"{opened.path} is a stage-2 Kosmos-G checkpoint (checkpoint_stage2.pt), the starting "
                "point of instruction tuning; it was never trained to follow image prompts. Use checkpoint_final.pt."
            )
        logger.warning("%s is a stage-2 checkpoint; checkpoint_final.pt gives the published results.", opened.path)
    tok = resolve_tokenizer(opened, tokenizer, tokenizer_dirs)
    vocab_rows = opened.shapes["gpt_model.decoder.embed_tokens.weight"][0]
    if tok.vocab_size != vocab_rows:
        raise TokenizerError(
            f"the tokenizer from {tok.source} has {tok.vocab_size} entries but the checkpoint's "
            f"embedding has {vocab_rows} rows: they do not belong together. Use the tokenizer files "
            "released with this checkpoint."
        )
    model = build_model(opened, parse_dtype(dtype), device, progress)
    opened.close()
    return KosmosGEncoder(model, tok)
