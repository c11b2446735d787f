"""Stage 3, compositional instruction tuning through a frozen SD 1.5 U-Net and VAE.

    accelerate launch -m training.stage3_instruct --init kosmosg_stage2.safetensors \\
        --sd stable-diffusion-v1-5 --data shards/ --output-dir runs/instruct

Trains the MLLM, the connector, the last ViT block + ln_post and AlignerNet M (paper: "MLLM and
AlignerNet jointly trained"); U-Net and VAE stay frozen. Loss: epsilon-MSE of the U-Net given the
Kosmos-G condition (mean over latent pixels, then over the batch), t ~ U{0..T-1}, DDPM noising,
10% of samples conditioned on the learned null embedding M(MLLM(<s>)) instead.

Data mix (``--data-weights caption,edit,composition``, paper 1:2:2):
* caption: the caption alone;
* edit (InstructPix2Pix style): ``input caption <i> instruction`` with the source image, the input
  caption dropped with p = 0.5, target = the edited image;
* composition (OpenImages style): the caption with an entity crop after each entity; per sample
  with p = 0.5 the entity words are dropped (the crop stands in for the noun), per entity with
  p = 0.5 the white-background crop replaces the crop with background.
Every random choice is drawn per sample from (seed, epoch, sample index).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from kosmosg_core.errors import CheckpointError, LimitError
from training.data import ShardDataset
from training.engine import Trainer, UsageError, add_common_args, new_parser, prepare_output, run_main, sample_generator
from training.kosmosg_common import encode_prompts, export_kosmosg, load_kosmosg_for_training, set_trainable

NULL_PROBABILITY = 0.1


def _coin(generator: torch.Generator, p: float = 0.5) -> bool:
    return bool(torch.rand((), generator=generator) < p)


def build_prompt(sample, generator: torch.Generator) -> tuple[str, list]:
    """(prompt with <i> placeholders, images) for one sample, by the paper's rules."""
    meta, images = sample.meta, sample.images
    if sample.kind == "caption":
        return meta["caption"], []
    if sample.kind == "edit":
        keep = not _coin(generator)
        prompt = f"{meta['input_caption']} <i> {meta['instruction']}" if keep else f"<i> {meta['instruction']}"
        return prompt, [images["source"]]
    if sample.kind == "composition":
        caption, drop_words = meta["caption"], _coin(generator)
        found = sorted((caption.find(e["name"]), i, e["name"]) for i, e in enumerate(meta["entities"])
                       if e["name"] in caption)
        pieces, crops, cursor = [], [], 0
        for start, index, name in found:
            if start < cursor:
                continue
            end = start if drop_words else start + len(name)
            pieces.append(caption[cursor:end] + " <i>")
            white = _coin(generator) and f"crop{index}_white" in images
            crops.append(images[f"crop{index}_white" if white else f"crop{index}"])
            cursor = start + len(name)
        return "".join(pieces) + caption[cursor:], crops
    raise ValueError(f"stage 3 trains on caption, edit and composition samples, not {sample.kind!r}")


def target_pixels(image, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size``, centre crop, scale to [-1, 1] (as the official loaders)."""
    from kosmosg_core import image_processing
    from kosmosg_core.image_processing import center_crop, resize_bicubic, resized_size

    limit = getattr(image_processing, "MAX_RESIZED_PIXELS", 50_000_000)
    width, height = resized_size(image.width, image.height, size)
    if width * height > limit:
        raise LimitError(f"a target image of {image.width}x{image.height} pixels resized to {size} would be "
                         f"{width}x{height}, more than the limit of {limit:,} pixels.")
    image = center_crop(resize_bicubic(image, size), size)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class InstructModel(torch.nn.Module):
    def __init__(self, kosmos, tokenizer, unet, vae, scheduler, resolution: int, seed: int):
        super().__init__()
        self.kosmos, self.unet, self.vae = kosmos, unet, vae
        self.tokenizer, self.scheduler, self.resolution, self.seed = tokenizer, scheduler, resolution, seed

    def forward(self, batch):
        device = self.kosmos.aligner.encoder_query.device
        generators = [sample_generator(self.seed, batch.epoch, i) for i in batch.indices]
        pairs = (build_prompt(s, g) for s, g in zip(batch.samples, generators, strict=True))
        prompts, images = zip(*pairs, strict=True)
        hidden, tokens = encode_prompts(self.kosmos, self.tokenizer, list(prompts), list(images), device)
        padding = tokens.eq(self.tokenizer.pad_id)
        cond = self.kosmos.align(hidden, padding if padding.any() else None)
        null_hidden, _ = encode_prompts(self.kosmos, self.tokenizer, [""], [[]], device)
        null = self.kosmos.align(null_hidden, None)  # learned, with gradients (official)
        use_null = torch.tensor([_coin(g, NULL_PROBABILITY) for g in generators], device=device)
        cond = torch.where(use_null[:, None, None], null.expand_as(cond), cond)

        pixels = torch.stack([target_pixels(s.images["target"], self.resolution) for s in batch.samples]).to(device)
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators]).to(device)
            latents = (dist.mean + dist.std * eps) * self.vae.config.scaling_factor
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(device)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.stack([torch.randint(0, steps, (), generator=g) for g in generators]).to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(noisy.to(self.unet.dtype), timesteps,
                               encoder_hidden_states=cond.to(self.unet.dtype)).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        return {"loss": loss, "null_fraction": use_null.float().mean()}


class MixedDataset:
    """A fixed, seeded interleaving of the kinds in the requested proportions."""

    def __init__(self, shards: ShardDataset, weights: dict[str, float], seed: int):
        by_kind: dict[str, list[int]] = {}
        for index in range(len(shards)):
            by_kind.setdefault(shards.kind_of(index), []).append(index)  # from the JSON: no image decoded
        present = {k: w for k, w in weights.items() if w > 0 and by_kind.get(k)}
        if not present:
            raise UsageError(f"no samples of the kinds with a positive --data-weights ({sorted(weights)}) in the data.")
        unit = max(len(by_kind[k]) / w for k, w in present.items())
        order = []
        for kind, weight in present.items():
            pool = by_kind[kind]
            order += [pool[i % len(pool)] for i in range(round(unit * weight))]
        permutation = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
        self.shards, self.order = shards, [order[i] for i in permutation]

    def __len__(self):
        return len(self.order)

    def __getitem__(self, index):
        return self.shards[self.order[index]]


def load_sd(folder: str):
    """Frozen U-Net, VAE and DDPM scheduler from a diffusers SD 1.5 folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval().requires_grad_(False)
    return unet, vae, DDPMScheduler.from_pretrained(folder, subfolder="scheduler")


FINALS = ["kosmosg_final.safetensors"]


def parse_weights(text: str) -> dict[str, float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or not any(values):
        raise UsageError("--data-weights must be three numbers >= 0 (caption,edit,composition), not all 0; "
                         f"got {text!r}.")
    return dict(zip(("caption", "edit", "composition"), values, strict=True))


def main(argv=None) -> int:
    return run_main(run, argv, "training.stage3_instruct")


def run(argv) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--init", required=True, help="stage-2 (or later) Kosmos-G checkpoint")
    parser.add_argument("--tokenizer")
    parser.add_argument("--sd", required=True, help="diffusers SD 1.5 folder (unet/, vae/, scheduler/)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-weights", default="1,2,2", help="caption,edit,composition")
    parser.add_argument("--resolution", type=int, default=512)
    args = add_common_args(parser).parse_args(argv)
    weights = parse_weights(args.data_weights)
    if not 8 <= args.resolution <= 4096 or args.resolution % 8:
        raise UsageError(f"--resolution must be a multiple of 8 between 8 and 4096, got {args.resolution}.")
    prepare_output(args, FINALS, [args.init, args.tokenizer, args.sd, args.data])

    torch.manual_seed(args.seed)
    data = ShardDataset(args.data, kinds=("caption", "edit", "composition"), need_target=True)
    kosmos, tokenizer = load_kosmosg_for_training(args.init, args.tokenizer)
    if kosmos.aligner is None:
        raise CheckpointError(f"{args.init} has no AlignerNet: stage 3 starts from a checkpoint with one "
                              "(the output of stage 2).")
    unet, vae, scheduler = load_sd(args.sd)
    if unet.config.cross_attention_dim != kosmos.aligner.config.hidden_size:
        raise CheckpointError(f"the U-Net attends to {unet.config.cross_attention_dim}-wide context but this "
                              f"AlignerNet writes {kosmos.aligner.config.hidden_size}-wide: align to that U-Net's "
                              "text encoder first.")
    set_trainable(kosmos, "instruct")
    if args.gradient_checkpointing:
        kosmos.text_model.gradient_checkpointing_enable()
    model = InstructModel(kosmos, tokenizer, unet, vae, scheduler, args.resolution, args.seed)
    trainer = Trainer(args, model, MixedDataset(data, weights, args.seed))
    trainer.run()
    state = trainer.full_state_dict()
    if trainer.accelerator.is_main_process:
        kept = {k: v for k, v in state.items() if not k.startswith("kosmos.aligner.decoder")}
        path = os.path.join(args.output_dir, "kosmosg_final.safetensors")
        print("saved", export_kosmosg(kept, tokenizer, path, "final"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
