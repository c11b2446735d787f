"""Pixels: ComfyUI tensors and odd PIL modes follow the official rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kosmosg_core.image_processing import center_crop, preprocess_images, resized_size


def comfy_tensor(path):
    """What ComfyUI's LoadImage makes of a file: RGB, k/255 float32, [1,H,W,C]."""
    image = Image.open(path).convert("RGB")
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0)[None]


def test_comfy_tensors_give_the_official_pixels(official_fixture):
    expected = load_file(official_fixture / "expected.safetensors")["resize_portrait_alpha.pixel_values"]
    images = [comfy_tensor(official_fixture / "images" / n) for n in ("portrait.png", "rgba_alpha.png")]
    assert torch.equal(preprocess_images(images, 56).float(), expected)
    batch = torch.cat([comfy_tensor(official_fixture / "images" / "noise.png")] * 3)
    assert preprocess_images([batch], 56).shape == (3, 3, 56, 56)  # a batch counts as 3 images


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((60, 60, 4), dtype=np.float32)
    rgba[..., 0] = 1.0  # red under fully transparent alpha
    pixels = preprocess_images([torch.from_numpy(rgba)], 56)
    red = preprocess_images([Image.new("RGB", (60, 60), (255, 0, 0))], 56)
    assert torch.equal(pixels, red)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_odd_modes_convert_like_pillow(mode):
    base = Image.linear_gradient("L").resize((70, 90))
    image = base.convert(mode)
    pixels = preprocess_images([image], 56)
    assert pixels.shape == (1, 3, 56, 56) and torch.isfinite(pixels.float()).all()
    assert torch.equal(pixels, preprocess_images([image.convert("RGB")], 56))


def test_grey_tensor_matches_grey_file(official_fixture):
    path = official_fixture / "images" / "greyscale.png"
    grey = torch.from_numpy(np.asarray(Image.open(path)).astype(np.float32) / 255.0)[None, :, :, None]
    expected = load_file(official_fixture / "expected.safetensors")["greyscale_negative.pixel_values"]
    assert torch.equal(preprocess_images([grey], 56).float(), expected)


def test_resize_and_crop_rules():
    assert resized_size(97, 61, 56) == (89, 56)  # long side truncated, not rounded
    assert resized_size(57, 118, 56) == (56, 115)
    assert resized_size(56, 300, 56) == (56, 300)
    image = Image.new("RGB", (56, 103))
    assert center_crop(image, 56).size == (56, 56)


def test_gill_processor_resizes_then_crops_to_the_tower_size():
    from kosmosg_core.image_processing import clip_processor_pixels

    picture = Image.new("RGB", (97, 61), (10, 200, 30))
    assert clip_processor_pixels([picture], 64, crop=56).shape == (1, 3, 56, 56)
    assert clip_processor_pixels([picture], 56).shape == (1, 3, 56, 56)
