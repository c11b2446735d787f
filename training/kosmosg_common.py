"""Kosmos-G pieces the three stage scripts share: loading, differentiable encoding, export."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from kosmosg_core.image_processing import preprocess_images
from kosmosg_core.kosmosg.checkpoint import (
    CONVERTED_FORMAT,
    DICT_TENSOR,
    SPM_TENSOR,
    official_key,
    open_checkpoint,
    tokenizer_tensors,
)
from kosmosg_core.kosmosg.encoder import mllm_forward
from kosmosg_core.kosmosg.layout import build_layout
from kosmosg_core.kosmosg.loading import build_model
from kosmosg_core.kosmosg.tokenizer import resolve_tokenizer
from kosmosg_core.safe_files import atomic_write_with


def load_kosmosg_for_training(init: str, tokenizer: str | None = None):
    """(model, tokenizer) from any Kosmos-G checkpoint (official .pt or converted), fp32, train-ready."""
    checkpoint = open_checkpoint(init)
    tok = resolve_tokenizer(checkpoint, tokenizer)
    model = build_model(checkpoint, torch.float32)
    checkpoint.close()
    return model.train(), tok


def set_trainable(model, stage: str) -> None:
    """Stage 1/3: MLLM, connector, last ViT block and ln_post; stage 2: AlignerNet only (M and N)."""
    model.requires_grad_(False)
    if stage == "align":
        model.aligner.requires_grad_(True)
        return
    model.text_model.requires_grad_(True)
    model.image_to_text_projection.requires_grad_(True)
    vision = model.vision_model.model
    vision.encoder.layers[-1].requires_grad_(True)
    vision.post_layernorm.requires_grad_(True)
    if stage == "instruct" and model.aligner is not None:
        model.aligner.encoder_proj.requires_grad_(True)
        model.aligner.encoder.requires_grad_(True)
        model.aligner.encoder_query.requires_grad_(True)


def encode_prompts(model, tokenizer, prompts: list[str], images: list[list], device,
                   pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable MLLM pass: (final-LN hidden states (B, T, D), token ids (B, T)); the same
    padded forward as inference (kosmosg_core's ``mllm_forward``), padded with the tokenizer's id."""
    config = model.config
    layouts = [build_layout(tokenizer, p, len(imgs), config.latent_queries)
               for p, imgs in zip(prompts, images, strict=True)]
    ordered = [imgs[i] for layout, imgs in zip(layouts, images, strict=True) for i in layout.image_order]
    pixels = preprocess_images(ordered, config.image_size) if ordered else None
    tokens, _, _, hidden = mllm_forward(model, [lay.tokens for lay in layouts], [lay.image_mask for lay in layouts],
                                        pixels, tokenizer.pad_id, device, torch.float32, pad_to)
    return hidden, tokens


def export_kosmosg(state_dict: dict, tokenizer, path: str, kind: str, prefix: str = "kosmos.") -> str:
    """Our converted safetensors (official key names, tokenizer inside): kosmosg_core and the
    ComfyUI loader read it directly. fp16 like the release. ``state_dict`` is the training
    module's full state dict; only keys under ``prefix`` (the Kosmos-G model) are kept."""
    state = {official_key(k[len(prefix):]): v.detach().to(torch.float16).contiguous().cpu()
             for k, v in state_dict.items() if k.startswith(prefix)}
    state.update(tokenizer_tensors(tokenizer))
    assert SPM_TENSOR in state and DICT_TENSOR in state
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # the whole state is in memory: safetensors' own writer; temp-then-rename, so an earlier run's file is
    # replaced only by a complete new one
    atomic_write_with(path, lambda tmp: save_file(state, tmp, metadata={"format": CONVERTED_FORMAT, "kind": kind,
                                                                        "source": "training"}))
    return path
