"""What a state dict's key names say: how many layers a prefix holds, and which model family a
file belongs to when it is not the one asked for (shared by the Kosmos-G and GILL loaders)."""

from __future__ import annotations

import re

from ..errors import CheckpointError


def count_layers(keys, prefix: str) -> int:
    """How many layers ``prefix<i>.*`` keys describe. The indices must be exactly 0..n-1: a model is
    built with as many layers as this returns, so one stray ``layers.100000000.`` key must not make
    10^8 of them (indices longer than 9 digits are never layer numbers and are not counted)."""
    pattern = re.compile(re.escape(prefix) + r"(0|[1-9]\d{0,8})\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    count = len(indices)
    if indices and max(indices) != count - 1:
        missing = min(set(range(count + 1)) - indices)
        raise CheckpointError(
            f"the layers under {prefix}* are numbered up to {max(indices)} but layer {missing} is missing "
            f"({count} layer(s) found): layer indices must run 0..n-1. The file is damaged, crafted or mixes models."
        )
    return count


def wrong_family(keys: list[str]) -> str | None:
    """A sentence naming what this file is, when it is something other than Kosmos-G."""

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("model.diffusion_model.") or has("first_stage_model.") or has("cond_stage_model."):
        return (
            "it is a Stable Diffusion checkpoint (U-Net/VAE/CLIP). Load it with ComfyUI's Load "
            "Checkpoint; the Kosmos-G loader needs the Kosmos-G release file checkpoint_final.pt"
        )
    if has("down_blocks.") or has("encoder.down_blocks.") or has("conv_in."):
        return "it is a diffusers U-Net or VAE, not Kosmos-G; use checkpoint_final.pt"
    if has("model.gen_text_hidden_fcs.") or has("model.visual_embeddings.") or has("model.input_embeddings."):
        return "it is a GILL checkpoint (pretrained_ckpt.pth.tar); load it with the GILL loader"
    if has("text_model.model.") and has("image_to_text_projection."):
        return "it is a Kosmos-2 model in transformers naming, not Kosmos-G; use checkpoint_final.pt"
    if has("visual.") or (has("transformer.resblocks.") and has("token_embedding.")):
        return (
            "it is ViT-L-14-sd.pt, the CLIP ViT-L/14 the authors used to start training. Inference "
            "does not need it (the vision tower is inside checkpoint_final.pt); use checkpoint_final.pt"
        )
    if has("text_model.embeddings.") or has("embeddings.token_embedding."):
        return "it is a CLIP text encoder, not Kosmos-G; use checkpoint_final.pt"
    return None
