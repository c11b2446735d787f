"""Standalone SD 1.5 generation from our conditioning, with diffusers (no ComfyUI).

The evaluation protocols generate thousands of images outside a ComfyUI graph; they use the
same conditioning code as the nodes (``KosmosGEncoder.encode_batch``, ``GILL.encode``) and a
stock ``StableDiffusionPipeline`` called with ``prompt_embeds``/``negative_prompt_embeds``,
which is the recipe the official code amounts to (uncond-first CFG, VAE scale 0.18215, no
guidance rescale). Initial latents are drawn here, one generator per item, so a batch of
items gives the same images as running them one by one, and a resumed run the same images
as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from ..errors import KosmosGError

# SD 1.5's scheduler/scheduler_config.json (a PNDM config every scheduler below re-reads).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
}
# diffusers 0.21.4 defaults, which the official code got from ``from_pretrained(SD, subfolder="scheduler")``;
# pinned because later diffusers changed them (the final step now goes to sigma 0).
DPMSOLVER_0214 = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
                  "lower_order_final": True, "use_karras_sigmas": False, "timestep_spacing": "linspace",
                  "final_sigmas_type": "sigma_min"}
SCHEDULERS = ("dpms", "ddim", "pndm")


def import_diffusers():
    try:
        import diffusers
    except ImportError as exc:
        raise KosmosGError("standalone generation needs diffusers: pip install -r training/requirements.txt "
                           "(or pip install 'diffusers>=0.30')") from exc
    return diffusers


def make_scheduler(name: str, base_config: dict | None = None):
    """``dpms`` (DPM-Solver++ 2M), ``ddim`` or ``pndm`` from SD 1.5's scheduler config."""
    diffusers = import_diffusers()
    config = {**SD15_SCHEDULER_CONFIG, **(base_config or {})}
    if name == "dpms":
        return diffusers.DPMSolverMultistepScheduler.from_config({**config, **DPMSOLVER_0214})
    if name == "ddim":
        return diffusers.DDIMScheduler.from_config(config)
    if name == "pndm":
        return diffusers.PNDMScheduler.from_config(config)
    raise KosmosGError(f"unknown scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")


def load_sd15(path: str, scheduler: str = "pndm", dtype: torch.dtype = torch.float16, device: str = "cpu"):
    """A ``StableDiffusionPipeline`` from a diffusers SD 1.5 folder (unet/, vae/, and for GILL's
    empty-prompt negative text_encoder/ + tokenizer/). No safety checker: the Kosmos-G code has
    none; GILL's has one, which blacks out flagged images (see the README's differences)."""
    diffusers = import_diffusers()
    if not os.path.isdir(path) or not os.path.isdir(os.path.join(path, "unet")):
        raise KosmosGError(
            f"{path} is not a diffusers Stable Diffusion 1.5 folder (unet/, vae/, scheduler/, text_encoder/, "
            "tokenizer/). Get one with: huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 "
            "--local-dir SD15 --include '*.json' '*.txt' '*.safetensors' --exclude '*.ckpt' 'v1-5-*'")
    missing = [sub for sub in ("unet", "vae") if not os.path.isdir(os.path.join(path, sub))]
    if missing:
        raise KosmosGError(f"{path} lacks {', '.join(missing)}/: it is not a complete SD 1.5 folder")
    load = {"torch_dtype": dtype, "local_files_only": True}
    unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet", **load)
    vae = diffusers.AutoencoderKL.from_pretrained(path, subfolder="vae", **load)
    text_encoder = tokenizer = None
    if os.path.isdir(os.path.join(path, "text_encoder")) and os.path.isdir(os.path.join(path, "tokenizer")):
        from transformers import CLIPTextModel, CLIPTokenizer

        text_encoder = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"), torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    config_file = os.path.join(path, "scheduler", "scheduler_config.json")
    base = {}
    if os.path.isfile(config_file):
        with open(config_file) as f:
            base = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=make_scheduler(scheduler, base),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.inference_mode()
def empty_prompt_embedding(pipe) -> torch.Tensor:
    """SD's own text encoder on "" padded to 77 tokens: the negative diffusers uses when GILL
    passes only ``prompt_embeds`` (nothing learned)."""
    if pipe.text_encoder is None:
        raise KosmosGError("GILL's negative is SD's text encoder on the empty prompt: the SD folder needs "
                           "text_encoder/ and tokenizer/")
    ids = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0]


def initial_latents(pipe, seeds: Sequence[int], per_seed: int, height: int, width: int) -> torch.Tensor:
    """``randn(per_seed, 4, h/8, w/8)`` from a fresh generator per seed, on the pipeline's device
    and in its dtype, as the official samplers draw them (one generator per batch of images)."""
    scale = pipe.vae_scale_factor
    shape = (per_seed, pipe.unet.config.in_channels, height // scale, width // scale)
    device, dtype = pipe.device, pipe.unet.dtype
    return torch.cat([torch.randn(shape, generator=torch.Generator(device).manual_seed(int(seed)), device=device,
                                  dtype=dtype) for seed in seeds])


@torch.inference_mode()
def generate_images(pipe, cond: torch.Tensor, uncond: torch.Tensor, seeds: Sequence[int], per_prompt: int = 1,
                    steps: int = 50, guidance: float = 7.5, height: int = 512, width: int = 512) -> list:
    """PIL images, ``per_prompt`` for each row of ``cond`` (B, 77, 768); row i uses ``seeds[i]``."""
    if cond.shape[0] != len(seeds):
        raise ValueError(f"{cond.shape[0]} conditioning rows but {len(seeds)} seeds")
    dtype = pipe.unet.dtype
    prompt_embeds = cond.to(pipe.device, dtype).repeat_interleave(per_prompt, dim=0)
    negative = uncond.to(pipe.device, dtype).expand(cond.shape[0], -1, -1).repeat_interleave(per_prompt, dim=0)
    latents = initial_latents(pipe, seeds, per_prompt, height, width)
    return pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative, latents=latents, guidance_scale=guidance,
                num_inference_steps=steps, height=height, width=width, output_type="pil").images
