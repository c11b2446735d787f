"""GILL release folder + OPT folder + CLIP folder -> a ready :class:`GILL`."""

from __future__ import annotations

import os

import torch

from ..dtypes import parse_dtype
from ..errors import CheckpointError
from ..image_processing import CLIP_MEAN, CLIP_STD
from .checkpoint import (
    CHECKPOINT_FILE,
    IMG_ROWS,
    _json_object,
    check_llm_folder,
    check_vision_folder,
    heads_config,
    read_decision_model,
    read_heads_state,
    read_model_args,
)
from .modeling import GILLHeads
from .pipeline import GILL

IMAGE_TOKEN = "<|image|>"


def build_tokenizer(llm_dir: str, num_tokens: int):
    """OPT's tokenizer plus ``<|image|>`` (cls) and ``[IMG0..N-1]``; ids come from the tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    tokenizer.add_special_tokens({"cls_token": IMAGE_TOKEN})
    for i in range(num_tokens):
        tokenizer.add_tokens(f"[IMG{i}]")
    ids = tokenizer.convert_tokens_to_ids([f"[IMG{i}]" for i in range(num_tokens)])
    return tokenizer, ids


def quantization_config(mode: str):
    if mode in (None, "", "none"):
        return None
    if not torch.cuda.is_available():
        raise CheckpointError(f"{mode} loading of the LLM needs a CUDA GPU (bitsandbytes); "
                              "load it in fp16/bf16 instead.")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise CheckpointError(f"{mode} loading needs the bitsandbytes package: pip install bitsandbytes") from None
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    raise ValueError(f"quantization must be none, 8bit or 4bit, got {mode!r}")


def _processor_settings(vision_dir: str, image_size: int) -> dict:
    """Resize (shortest edge), mean and std from ``preprocessor_config.json`` when present; the crop
    is always the vision tower's input size."""
    settings = {"size": image_size, "mean": CLIP_MEAN, "std": CLIP_STD}
    path = os.path.join(vision_dir, "preprocessor_config.json")
    if os.path.isfile(path):
        config = _json_object(path, "preprocessor_config.json")
        try:
            size = config.get("size", image_size)
            settings["size"] = int(size.get("shortest_edge", image_size) if isinstance(size, dict) else size)
            settings["mean"] = tuple(float(v) for v in config.get("image_mean", CLIP_MEAN))
            settings["std"] = tuple(float(v) for v in config.get("image_std", CLIP_STD))
        except (TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path} has an unexpected size, image_mean or image_std ({exc}).") from None
        if not 0 < settings["size"] <= 4096 or len(settings["mean"]) != 3 or len(settings["std"]) != 3:
            raise CheckpointError(f"{path} gives a resize of {settings['size']} or a mean/std that is not 3 values.")
    return settings


def load_gill(checkpoint_dir: str, llm_dir: str, vision_dir: str, dtype="fp32", device="cpu",
              quantization: str = "none") -> GILL:
    from transformers import CLIPVisionModel, OPTForCausalLM

    dtype = parse_dtype(dtype)
    args = read_model_args(checkpoint_dir)
    state = read_heads_state(checkpoint_dir)
    config = heads_config(state, args, os.path.join(checkpoint_dir, CHECKPOINT_FILE))
    check_llm_folder(llm_dir, config.llm_dim)
    vision_config = check_vision_folder(vision_dir, config.vision_dim)

    tokenizer, img_ids = build_tokenizer(llm_dir, config.num_img_tokens)
    quant = quantization_config(quantization)
    lm_kwargs = {"quantization_config": quant, "device_map": {"": device}} if quant else {}
    lm = OPTForCausalLM.from_pretrained(llm_dir, dtype=dtype, **lm_kwargs)
    try:  # the new rows are overwritten below (or unused), so skip the mean-based init
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    except TypeError:  # transformers < 4.46
        lm.resize_token_embeddings(len(tokenizer))
    rows = state.pop(IMG_ROWS).to(dtype)
    with torch.no_grad():  # the [IMG] rows live in the input embedding and the (tied) output head
        lm.get_input_embeddings().weight[img_ids] = rows.to(lm.get_input_embeddings().weight.device)
        head = lm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != lm.get_input_embeddings().weight.data_ptr():
            head.weight[img_ids] = rows.to(head.weight.device)
    vision = CLIPVisionModel.from_pretrained(vision_dir, dtype=dtype)

    with torch.device("meta"):
        heads = GILLHeads(config)
    try:
        missing = heads.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False,
                                        assign=True).missing_keys
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint_dir}: GILL weights do not fit together ({exc})") from None
    if missing:
        raise CheckpointError(f"{checkpoint_dir}: the GILL checkpoint lacks {', '.join(missing[:4])}; "
                              "it is incomplete.")
    decision, note = read_decision_model(checkpoint_dir, config.llm_dim)
    image_size = vision_config.get("image_size", 224)
    pixels = _processor_settings(vision_dir, image_size)
    modules = [heads, vision] + ([decision] if decision is not None else [])
    for module in modules:
        module.to(device).eval().requires_grad_(False)
    if not quant:
        lm.to(device)
    lm.eval().requires_grad_(False)
    return GILL(tokenizer, lm, vision, heads, img_ids, image_size, decision, note, pixels["mean"], pixels["std"],
                resize=pixels["size"])
