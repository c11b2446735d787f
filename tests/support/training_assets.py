"""Tiny models and shards for the training tests (all generated here, seconds to make)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch
from PIL import Image

CAPTIONS = ["a red apple on a wooden table", "a dog wearing a hat", "a cat on the beach at sunset",
            "a house in the snowy mountains", "a blue car next to a tree", "two birds on a wire",
            "a bowl of soup with bread", "a man riding a bicycle"]


def image(seed: int, size=(40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def write_kosmosg(folder: str, width: int = 64, with_reconstruction: bool = False) -> str:
    from kosmosg_core.kosmosg.synthetic import (
        dict_lines_for,
        tiny_size,
        write_official_checkpoint,
        write_tiny_tokenizer,
    )

    os.makedirs(folder, exist_ok=True)
    write_tiny_tokenizer(folder, dict_lines=dict_lines_for(400))
    return write_official_checkpoint(os.path.join(folder, "checkpoint.pt"), tiny_size(400, width, with_reconstruction),
                                     seed=5)


def write_teacher(folder: str, width: int = 64) -> str:
    """A CLIPTextModel (1 layer) with a GPT-2 style tokenizer: stands in for SD's text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from kosmosg_core.gill.synthetic import write_opt_tokenizer

    vocab = write_opt_tokenizer(folder)
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                            num_attention_heads=1, max_position_embeddings=77, pad_token_id=1, bos_token_id=2,
                            eos_token_id=2)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def write_sd(folder: str, context: int = 64) -> str:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                         cross_attention_dim=context, attention_head_dim=8, norm_num_groups=8).save_pretrained(
        os.path.join(folder, "unet"))
    AutoencoderKL(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                  up_block_types=("UpDecoderBlock2D",),
                  latent_channels=4, norm_num_groups=8, sample_size=32).save_pretrained(os.path.join(folder, "vae"))
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(
        os.path.join(folder, "scheduler"))
    return folder


def write_shards(folder: str, kinds=("caption",), count: int = 8) -> str:
    from training.data import ShardWriter

    if os.path.isdir(folder):
        shutil.rmtree(folder)
    with ShardWriter(folder, per_shard=5) as writer:
        for i in range(count):
            kind = kinds[i % len(kinds)]
            caption = CAPTIONS[i % len(CAPTIONS)]
            if kind == "caption":
                writer.write({"kind": "caption", "caption": caption}, {"target": image(i)})
            elif kind == "edit":
                writer.write({"kind": "edit", "input_caption": caption, "instruction": "make it night"},
                             {"source": image(i), "target": image(100 + i)})
            elif kind == "composition":
                words = caption.split()
                entities = [{"name": words[1]}, {"name": words[-1]}]
                crops = {f"crop{k}": image(200 + 2 * k + i, (20, 20)) for k in range(2)}
                crops.update({f"crop{k}_white": image(300 + k + i, (20, 20)) for k in range(2)})
                writer.write({"kind": "composition", "caption": caption, "entities": entities},
                             {"target": image(i), **crops})
    return folder
