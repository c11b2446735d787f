"""Checkpoint file -> ready :class:`KosmosGEncoder`, without a second copy of the weights.

The model is built on the ``meta`` device (no random init). Weights already in the target dtype
stay views of the memory-mapped file; the others are cast straight from the mapping into fresh
memory (see :mod:`kosmosg_core.weights.host_memory`), whose source pages are then dropped. With int8 each
linear is quantized as it arrives. Peak memory is the loaded model plus a few tensors.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from ..dtypes import parse_dtype
from ..errors import CheckpointError, TokenizerError
from ..weights.host_memory import empty_weight, return_freed_memory
from ..weights.quantization import quantize_linear, quantized_weight_names
from .checkpoint import (
    KIND_STAGE1,
    KIND_STAGE2,
    Checkpoint,
    module_key,
    open_checkpoint,
)
from .config import KosmosGConfig
from .encoder import KosmosGEncoder
from .modeling import KosmosGModel
from .tokenizer import KosmosGTokenizer, resolve_tokenizer

logger = logging.getLogger(__name__)

LOAD_THREADS = min(4, os.cpu_count() or 1)


@contextlib.contextmanager
def _without_random_init():
    """Modules still run their random init on ``meta`` (a tenth of a second at the real size, for
    values nobody reads: every weight comes from the file). ``torch.nn.init`` is stubbed meanwhile.

    transformers records ``torch.nn.init``'s functions when it is first imported (``transformers.initialization``)
    and puts them back after every ``from_pretrained``: imported inside this window, it would record the stubs
    and leave every later model of the process uninitialised. So what the model imports is imported first."""
    import transformers.models.kosmos2.modeling_kosmos2  # noqa: F401  (see above)

    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    for name in _INIT_FUNCTIONS:
        setattr(torch.nn.init, name, _keep)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _keep(tensor, *args, **kwargs):
    return tensor


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "orthogonal_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")


def build_model(
    checkpoint: Checkpoint,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    quantization: str = "none",
) -> KosmosGModel:
    """The model, every weight read once into ``dtype`` on ``device``. With ``quantization`` each
    linear weight is quantized as soon as it is read, so the full-precision model never exists."""
    try:
        config = KosmosGConfig.from_shapes(checkpoint.shapes)
    except CheckpointError as exc:
        raise CheckpointError(f"{checkpoint.path}: {exc}") from None
    except (ValueError, TypeError) as exc:  # a weight of the wrong rank where a matrix is expected
        raise CheckpointError(f"{checkpoint.path}: a weight has an unexpected shape ({exc}); the file is damaged "
                              "or not a Kosmos-G checkpoint.") from None
    with torch.device("meta"), _without_random_init():
        model = KosmosGModel(config)
    shapes = model.state_dict()
    mapping = _official_keys(checkpoint, shapes)
    quantized = quantized_weight_names(model, quantization)
    reader = checkpoint.reader()
    on_cpu = torch.device(device).type == "cpu"

    def read(target: str) -> tuple[str, torch.Tensor]:
        key = mapping[target]
        if on_cpu and checkpoint.dtypes[key] == dtype and target not in quantized:
            view = checkpoint.mapped(key)  # same dtype: a view of the file, nothing copied
            if view is not None:
                return target, view
        # a fresh tensor of the target dtype, filled from the file: no second copy of the model
        tensor = empty_weight(shapes[target].shape, dtype)
        checkpoint.read_into(key, tensor, reader)
        return target, tensor if on_cpu else tensor.to(device)

    state = {}
    # Unquantized weights first, biggest first; two readers overlap file reads, page faults of the
    # fresh memory and casts (all release the GIL), a few tensors ahead of the consumer at most.
    order = sorted(mapping, key=lambda t: (t in quantized, -shapes[t].numel()))
    with ThreadPoolExecutor(max_workers=LOAD_THREADS if reader is not None else 1) as pool:
        try:
            for done, (target, tensor) in enumerate(_ahead(pool, read, order, 2 * LOAD_THREADS), start=1):
                if target in quantized:
                    quantize_linear(model.get_submodule(target.removesuffix(".weight")), tensor, quantization)
                    del tensor
                    return_freed_memory()
                else:
                    state[target] = tensor
                if progress is not None:
                    progress(done, len(order))
        finally:
            if reader is not None:
                reader.close()
    checkpoint.make_resident()  # "loaded" means in memory, not merely mapped
    try:
        model.load_state_dict(state, strict=not quantized, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint.path}: weights do not fit together ({exc})") from None
    del state
    model.reset_non_persistent_buffers(device)
    return model.eval().requires_grad_(False)


def _official_keys(checkpoint: Checkpoint, shapes: dict[str, torch.Tensor]) -> dict[str, str]:
    """Model key -> checkpoint key for every weight the model needs, shapes checked up front."""
    mapping = {}
    for key in checkpoint.keys():
        target = module_key(key)
        if target is not None and target in shapes:
            mapping[target] = key
    missing = sorted(set(shapes) - set(mapping))
    if missing:
        raise CheckpointError(
            f"{checkpoint.path} lacks {len(missing)} weight(s) the model needs, e.g. "
            f"{', '.join(missing[:4])}. The file is incomplete or from another model version."
        )
    for target, key in mapping.items():
        if tuple(checkpoint.shapes[key]) != tuple(shapes[target].shape):
            raise CheckpointError(
                f"{checkpoint.path}: {key} has shape {tuple(checkpoint.shapes[key])} but the other weights "
                f"make it {tuple(shapes[target].shape)}; the file is damaged or mixes two models."
            )
    return mapping


def _ahead(pool: ThreadPoolExecutor, function, items: list, window: int):
    """``pool.map`` that runs at most ``window`` items ahead of the consumer (bounded memory)."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def load_kosmosg(
    checkpoint: str | os.PathLike | Checkpoint,
    tokenizer: str | KosmosGTokenizer | None = None,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    allow_stage2: bool = True,
    tokenizer_dirs: list[str] = (),
    cache_converted: bool = True,
    quantization: str = "none",
) -> KosmosGEncoder:
    """Load a Kosmos-G checkpoint (official ``.pt`` or converted) into an encoder.

    ``tokenizer_dirs`` are searched (with their ``tokenizer/`` subfolders) after the checkpoint's
    own folder when neither ``tokenizer`` nor an embedded tokenizer is given. With
    ``cache_converted`` an official ``.pt`` is converted once beside its folder and later loads
    read the converted copy (see :mod:`kosmosg_core.kosmosg.converted_cache`). ``quantization="int8"``
    stores the linear weights as int8 (torchao; activations keep ``dtype``).
    """
    from .converted_cache import convert_to_cache, open_cached, open_preferring_cache

    if isinstance(checkpoint, Checkpoint):
        opened = checkpoint
    else:
        opened = (open_preferring_cache(os.fspath(checkpoint), parse_dtype(dtype)) if cache_converted
                  else open_checkpoint(checkpoint))
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
    if cache_converted and opened.format == "fairseq-pt":
        cached = convert_to_cache(opened, parse_dtype(dtype))
        if cached is not None:
            opened.close()
            opened = open_cached(cached, opened.path)
    model = build_model(opened, parse_dtype(dtype), device, progress, quantization)
    opened.close()
    return KosmosGEncoder(model, tok)
