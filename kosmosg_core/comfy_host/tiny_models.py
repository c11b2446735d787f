"""Tiny random models under the file names users have, for tests and the offline smoke run.

SD 1.5 parts are built from ComfyUI's own module classes so every key is where ComfyUI's
loaders look (checkpoint detected as SD15, ControlNet and LoRA keys all mapped). Sizes follow
the smallest layout ComfyUI still detects as SD 1.5: one level, one res block, 320 channels,
768-wide context, a full 12-layer CLIP-L (fewer layers would leave weights unset) and TAESD.
Nothing here is meant to make good images: only real, finite ones from the real code paths.
"""

from __future__ import annotations

import math
import os

import torch

from ..kosmosg.synthetic import dict_lines_for, tiny_size, write_official_checkpoint, write_tiny_tokenizer

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CONTROLNET = "control_v11p_sd15_canny.pth"
LORA = "sd15_style_lora.safetensors"
KOSMOSG_CHECKPOINT = "checkpoint_final.pt"
GILL_RELEASE, GILL_LLM, GILL_VISION = "gill_opt", "opt-6.7b", "clip-vit-large-patch14"

UNET_CONFIG = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1], channel_mult=[1],
    num_heads=8, transformer_depth=[1], transformer_depth_output=[0, 0], transformer_depth_middle=-2,
    context_dim=768, use_spatial_transformer=True, use_linear_in_transformer=False, legacy=False,
    adm_in_channels=None,
)
CLIP_CONFIG = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    eos_token_id=49407, bos_token_id=49406, pad_token_id=1,
)
LORA_TARGETS = {  # kohya names of the first transformer block -> (in, out, is 1x1 conv)
    "proj_in": (320, 320, True), "proj_out": (320, 320, True),
    "transformer_blocks_0_attn1_to_q": (320, 320, False), "transformer_blocks_0_attn1_to_k": (320, 320, False),
    "transformer_blocks_0_attn1_to_v": (320, 320, False), "transformer_blocks_0_attn1_to_out_0": (320, 320, False),
    "transformer_blocks_0_attn2_to_q": (320, 320, False), "transformer_blocks_0_attn2_to_k": (768, 320, False),
    "transformer_blocks_0_attn2_to_v": (768, 320, False), "transformer_blocks_0_attn2_to_out_0": (320, 320, False),
    "transformer_blocks_0_ff_net_0_proj": (320, 2560, False), "transformer_blocks_0_ff_net_2": (1280, 320, False),
}


def randomize(state: dict, generator: torch.Generator) -> dict:
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
        elif value.ndim <= 1:
            out[key] = torch.ones_like(value) if key.endswith(("weight", "vae_scale")) else torch.zeros_like(value)
        else:
            fan_in = math.prod(value.shape[1:])
            out[key] = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
    return out


def _unet_state(config: dict, cls, generator) -> dict:
    import comfy.ops

    with torch.device("meta"):
        module = cls(**config, operations=comfy.ops.disable_weight_init)
    shapes = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in module.state_dict().items()}
    return randomize(shapes, generator)


def write_tiny_sd15(path: str, seed: int = 0) -> str:
    import comfy.ops
    from comfy.clip_model import CLIPTextModel
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {f"model.diffusion_model.{k}": v for k, v in _unet_state(UNET_CONFIG, UNetModel, generator).items()}
    with torch.device("meta"):
        clip = CLIPTextModel(CLIP_CONFIG, torch.float32, None, comfy.ops.disable_weight_init)
    clip_state = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in clip.state_dict().items()
                  if "text_projection" not in k}
    clip_state = randomize(clip_state, generator)
    clip_state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_state.items()})
    taesd = TAESD(latent_channels=4)
    state.update({f"first_stage_model.{k}": v for k, v in randomize(taesd.state_dict(), generator).items()})
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    return path


def write_tiny_controlnet(path: str, seed: int = 1) -> str:
    from comfy.cldm.cldm import ControlNet

    config = {k: v for k, v in UNET_CONFIG.items() if k not in ("out_channels", "transformer_depth_output")}
    state = _unet_state({**config, "hint_channels": 3}, ControlNet, torch.Generator().manual_seed(seed))
    torch.save({f"control_model.{k}": v.half() for k, v in state.items()}, path)
    return path


def write_tiny_lora(path: str, seed: int = 2, rank: int = 4) -> str:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for target, (fan_in, fan_out, conv) in LORA_TARGETS.items():
        name = f"lora_unet_down_blocks_0_attentions_0_{target}"
        down, up = (rank, fan_in), (fan_out, rank)
        if conv:
            down, up = down + (1, 1), up + (1, 1)
        state[f"{name}.lora_down.weight"] = torch.randn(down, generator=generator) / math.sqrt(fan_in)
        state[f"{name}.lora_up.weight"] = torch.randn(up, generator=generator) / math.sqrt(rank)
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file({k: v.half() for k, v in state.items()}, path)
    return path


def write_tiny_kosmosg(folder: str, seed: int = 0) -> str:
    """checkpoint_final.pt (official format, 768-wide output) with its tokenizer files beside it."""
    os.makedirs(folder, exist_ok=True)
    write_tiny_tokenizer(folder, dict_lines=dict_lines_for(400))
    return write_official_checkpoint(os.path.join(folder, KOSMOSG_CHECKPOINT), tiny_size(400, 768), seed=seed)


def write_tiny_gill_folders(folder: str) -> dict[str, str]:
    """GILL's release, OPT and CLIP folders under the names the workflows use."""
    from ..gill.synthetic import tiny_heads_config, write_clip_vision, write_opt, write_release

    paths = {"release": os.path.join(folder, GILL_RELEASE), "llm": os.path.join(folder, GILL_LLM),
             "vision": os.path.join(folder, GILL_VISION)}
    write_release(paths["release"], tiny_heads_config())
    write_opt(paths["llm"])
    write_clip_vision(paths["vision"])
    return paths


def _publish_new(staged: str, dest: str) -> str:
    """Moves a finished file or folder into place unless something is already there (never over it)."""
    if not os.path.lexists(dest):
        try:
            os.rename(staged, dest)  # atomic; a folder rename fails rather than merge into one made meanwhile
        except OSError:
            if not os.path.lexists(dest):
                raise
    return dest


def _staged(dest_folder: str, write) -> dict[str, str]:
    """``write(tmp_folder)`` in a hidden folder beside the destination, then each new entry moved in.

    Every model appears complete or not at all, and a file already in ``dest_folder`` (the user's,
    or an earlier run's) is kept as it is."""
    import shutil
    import tempfile

    tmp = tempfile.mkdtemp(prefix=".tiny-", dir=dest_folder)
    try:
        write(tmp)
        return {name: _publish_new(os.path.join(tmp, name), os.path.join(dest_folder, name))
                for name in sorted(os.listdir(tmp))}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_tiny_models(models_dir: str) -> dict[str, str]:
    """Every file the example workflows name, in ComfyUI's folder layout under ``models_dir``.

    Written temp-then-rename; a name that already exists is left alone (a rerun reuses them)."""
    folders = {name: os.path.join(models_dir, name)
               for name in ("checkpoints", "controlnet", "loras", "kosmos_g", "gill")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)

    def single(folder: str, name: str, writer) -> str:
        dest = os.path.join(folders[folder], name)
        if os.path.lexists(dest):
            return dest
        return _staged(folders[folder], lambda tmp: writer(os.path.join(tmp, name)))[name]

    gill = {GILL_RELEASE: "release", GILL_LLM: "llm", GILL_VISION: "vision"}
    gill_paths = {gill[name]: os.path.join(folders["gill"], name) for name in gill}
    if not all(os.path.lexists(p) for p in gill_paths.values()):
        _staged(folders["gill"], write_tiny_gill_folders)
    kosmos = os.path.join(folders["kosmos_g"], KOSMOSG_CHECKPOINT)
    if not os.path.lexists(kosmos):
        _staged(folders["kosmos_g"], write_tiny_kosmosg)
    return {
        "checkpoint": single("checkpoints", SD15_CHECKPOINT, write_tiny_sd15),
        "controlnet": single("controlnet", CONTROLNET, write_tiny_controlnet),
        "lora": single("loras", LORA, write_tiny_lora),
        "kosmos_g": kosmos,
        **{f"gill_{k}": v for k, v in gill_paths.items()},
    }
