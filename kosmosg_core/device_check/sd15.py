"""A random SD 1.5 checkpoint at the real size, built from ComfyUI's own classes.

The U-Net (860 M parameters), CLIP ViT-L/14 text encoder (123 M) and KL VAE (84 M) are made on the
``meta`` device from ComfyUI's modules with the configuration ComfyUI detects for SD 1.5, filled
with random values by the same rule as the tiny test models, and saved in fp16 under the original
checkpoint's key layout (``model.diffusion_model.``, ``cond_stage_model.transformer.``,
``first_stage_model.``), so CheckpointLoaderSimple loads it as it loads v1-5-pruned-emaonly.
ComfyUI must be importable (the runner's ComfyHost puts it on sys.path).
"""

from __future__ import annotations

import torch

UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 2, 4, 4], num_heads=8, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1, context_dim=768,
    use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False, adm_in_channels=None,
)
VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
           num_res_blocks=2, attn_resolutions=[], dropout=0.0)  # comfy/sd.py's SD 1.x defaults


def _shapes(module: torch.nn.Module) -> dict:
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in module.state_dict().items()}


def meta_state() -> dict[str, dict]:
    """Key -> meta tensor for each part, under the checkpoint's prefixes (no memory used)."""
    import comfy.ops
    from comfy.clip_model import CLIPTextModel
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from ..comfy_host.tiny_models import CLIP_CONFIG

    with torch.device("meta"):
        unet = UNetModel(**UNET, operations=comfy.ops.disable_weight_init)
        clip = CLIPTextModel(CLIP_CONFIG, torch.float32, None, comfy.ops.disable_weight_init)
        vae = AutoencoderKL(ddconfig=VAE, embed_dim=4)
    return {
        "unet": {f"model.diffusion_model.{k}": v for k, v in _shapes(unet).items()},
        "clip": {f"cond_stage_model.transformer.{k}": v for k, v in _shapes(clip).items()
                 if "text_projection" not in k},
        "vae": {f"first_stage_model.{k}": v for k, v in _shapes(vae).items()},
    }


def detect(state: dict) -> dict:
    """What ComfyUI's own detection makes of the U-Net keys (shapes only)."""
    import comfy.model_detection

    config = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    return {"detected_as": type(config).__name__ if config is not None else None,
            "unet_config": None if config is None else {k: v for k, v in config.unet_config.items()
                                                         if k in ("model_channels", "num_res_blocks", "channel_mult",
                                                                  "transformer_depth", "context_dim")}}


def layout() -> dict:
    """Parameter counts and ComfyUI's detection of the real-size layout, without making any weight."""
    parts = meta_state()
    counts = {part: sum(v.numel() for v in state.values() if v.is_floating_point()) for part, state in parts.items()}
    return {"parameters": counts, **detect(parts["unet"])}


def write(path: str, seed: int = 0) -> dict:
    """The random real-size checkpoint at ``path`` (fp16 safetensors); returns its layout figures."""
    from safetensors.torch import save_file

    from ..comfy_host.tiny_models import randomize

    generator = torch.Generator().manual_seed(seed)
    parts = meta_state()
    state = {}
    for part in parts.values():
        templates = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in part.items()}
        state.update({k: v.half() if v.is_floating_point() else v for k, v in randomize(templates, generator).items()})
        del templates
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    save_file(state, path)
    counts = {part: sum(v.numel() for v in p.values() if v.is_floating_point()) for part, p in parts.items()}
    return {"parameters": counts, **detect(parts["unet"])}
