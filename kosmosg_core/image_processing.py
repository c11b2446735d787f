"""Pixels exactly as the official Kosmos-G (and GILL) pipelines make them.

Official path (``AppModel._build_image_transform()['gpt']`` + ``kosmosg_preprocess``):

1. the demo's gradio input decodes the file, applies the EXIF orientation and ``convert("RGB")``
   (RGBA drops alpha with no compositing; L copies grey into R, G, B);
2. torchvision ``Resize(S, BICUBIC)`` on the PIL image: shorter side -> S, longer side ->
   ``int(S * long / short)`` (truncated), done by Pillow's 8-bit bicubic, horizontal pass first.
   Pillow 13 may run the vertical pass first, so we resize in two calls (width, then height),
   which is exact under every Pillow;
3. torchvision ``CenterCrop(S)``: offsets ``round((h' - S) / 2)`` with round-half-to-even;
4. float64 ``/255``, minus CLIP mean, divided by CLIP std; the stacked batch is cast to float16.

ComfyUI ``IMAGE`` tensors ([B,H,W,C] float in 0..1, as ``LoadImage`` stores k/255) map back to
8-bit pixels by ``round(x * 255)`` clamped to 0..255, which recovers the file's bytes exactly.

Limits (hostile files are downloaded from strangers): an image file must be a regular file of at
most 1 GiB whose header declares at most 100,000,000 pixels (``MAX_IMAGE_PIXELS``; an 8000x8000
photo is 64 MP), checked before anything is decoded; the same pixel limit holds for tensors and
PIL images passed in. The resize target (shorter side -> S, longer side -> S * long / short) may
hold at most 50,000,000 pixels (``MAX_RESIZED_PIXELS``: at S = 224 an aspect ratio up to about
1000:1), so a 1 x 2,000,000 strip is refused instead of asking for tens of GB. Pillow's
decompression-bomb warning and error become one :class:`ImageError`.
"""

from __future__ import annotations

import os
import warnings
from struct import error as struct_error
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .safe_files import regular_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MODE_FOR_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}

MAX_IMAGE_PIXELS = 100_000_000  # decoded width * height; 8000x8000 (64 MP) photos pass
MAX_RESIZED_PIXELS = 50_000_000  # the resize target before the centre crop
MAX_IMAGE_BYTES = 1 << 30  # an image file larger than this is not a picture we can use


def check_pixel_count(width: int, height: int, what: str = "image") -> None:
    """Refuse sizes above :data:`MAX_IMAGE_PIXELS` (before any pixel is decoded or copied)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
            "this pipeline decodes (it shrinks every image to a few hundred pixels anyway): downscale it first."
        )


def load_image_file(path: str | os.PathLike) -> Image.Image:
    """Decode an image file the way the official demo received it (EXIF applied, RGB)."""
    return to_rgb(decode_image_file(path))


def decode_image_file(path: str | os.PathLike) -> Image.Image:
    """The decoded image as stored (no EXIF rotation, any mode), under this module's limits.

    Only regular files (a FIFO would block forever); the size in the header is checked before
    the pixels are decoded."""
    path = regular_file(path, "image file", ImageError, max_bytes=MAX_IMAGE_BYTES)
    return decode_image(path, f"image {path}")


def decode_image(source: str | IO[bytes], where: str) -> Image.Image:
    """Decode a path or an open binary stream (e.g. a tar member) under :data:`MAX_IMAGE_PIXELS`,
    checked from the header before any pixel is decoded; every failure is one :class:`ImageError`
    that starts with ``where``."""
    try:
        with warnings.catch_warnings():  # our own limit is checked from the header below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                check_pixel_count(image.width, image.height, where)
                image.load()
                check_pixel_count(image.width, image.height, where)  # some formats pick a size on load
                return image.copy()  # closing the file invalidates the decoded image in Pillow
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{where} is refused as a decompression bomb ({exc}): it declares more pixels "
                         f"than the {MAX_IMAGE_PIXELS:,} this pipeline decodes.") from None
    except FileNotFoundError:
        raise ImageError(f"{where}: file not found") from None
    except MemoryError:
        raise ImageError(f"{where} needs more memory to decode than is available.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError,
            KeyError, ZeroDivisionError, OverflowError, struct_error) as exc:
        raise ImageError(f"{where} is not a readable image file ({' '.join(str(exc).split())[:300]}).") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation, then Pillow's ``convert("RGB")``: alpha dropped, grey replicated."""
    check_pixel_count(image.width, image.height)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, struct_error) as exc:
        raise ImageError(f"the image's EXIF data is damaged ({' '.join(str(exc).split())[:200]}): re-save the "
                         "picture without metadata.") from None
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image has no pixels ({image.width}x{image.height}).")
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_layout(shape: tuple[int, ...]) -> None:
    if len(shape) not in (3, 4) or shape[-1] not in _MODE_FOR_CHANNELS or 0 in shape:
        raise ImageError(
            f"expected an image tensor shaped [H,W,C] or a batch [B,H,W,C] with C = 1, 3 or 4 "
            f"(ComfyUI IMAGE layout), got shape {shape}."
        )


def array_to_pil(pixels: np.ndarray | torch.Tensor) -> Image.Image:
    """One [H,W,C] image (float 0..1 or uint8, C in 1/3/4) to an RGB PIL image."""
    if isinstance(pixels, torch.Tensor):
        if pixels.ndim in (2, 3):  # checked before the float64 copy below
            check_pixel_count(pixels.shape[1], pixels.shape[0], "image tensor")
        pixels = pixels.detach().cpu()
        pixels = pixels.numpy() if pixels.dtype == torch.uint8 else pixels.double().numpy()
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    _check_layout(tuple(pixels.shape))
    check_pixel_count(pixels.shape[1], pixels.shape[0], "image tensor")
    if pixels.dtype != np.uint8:
        pixels = np.asarray(pixels, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise ImageError("image tensor contains NaN or infinite values.")
        pixels = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    channels = pixels.shape[-1]
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, _MODE_FOR_CHANNELS[channels])
    return to_rgb(image)


def as_pil_images(images) -> list[Image.Image]:
    """Flatten PIL images, file paths and [B,H,W,C] tensors (a batch counts as B images)."""
    if images is None:
        return []
    if isinstance(images, (Image.Image, str, os.PathLike, torch.Tensor, np.ndarray)):
        images = [images]
    result = []
    for item in images:
        if isinstance(item, Image.Image):
            result.append(to_rgb(item))
        elif isinstance(item, (str, os.PathLike)):
            result.append(load_image_file(item))
        elif isinstance(item, (torch.Tensor, np.ndarray)):
            _check_layout(tuple(item.shape) if item.ndim != 2 else (*item.shape, 1))
            if item.ndim == 4:
                result.extend(array_to_pil(frame) for frame in item)
            else:
                result.append(array_to_pil(item))
        else:
            raise ImageError(f"unsupported image type {type(item).__name__}: pass PIL images, paths or tensors.")
    return result


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)`` output for a PIL image: shorter side -> size, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    if short == size:
        return width, height
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def check_resize(width: int, height: int, size: int) -> tuple[int, int]:
    """The resize target of a ``width`` x ``height`` image, refused above :data:`MAX_RESIZED_PIXELS`
    (a thin strip resized to ``size`` on its short side would need gigabytes)."""
    new_w, new_h = resized_size(width, height, size)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ImageError(
            f"image is {width}x{height}: resizing its shorter side to {size} would make it {new_w}x{new_h} "
            f"= {new_w * new_h:,} pixels, more than the {MAX_RESIZED_PIXELS:,} allowed (aspect ratio too "
            "extreme); crop it closer to a square first."
        )
    return new_w, new_h


def resize_bicubic(image: Image.Image, size: int) -> Image.Image:
    """Pillow 8-bit bicubic, horizontal pass then vertical pass, as Pillow 9.4-12 do it."""
    new_w, new_h = check_resize(image.width, image.height, size)
    if new_w != image.width:
        image = image.resize((new_w, image.height), Image.BICUBIC)
    if new_h != image.height:
        image = image.resize((new_w, new_h), Image.BICUBIC)
    return image


def center_crop(image: Image.Image, size: int, floor: bool = False) -> Image.Image:
    """torchvision ``CenterCrop`` (offsets rounded half to even, Kosmos-G) or, with ``floor``,
    transformers' ``center_crop`` (offsets floored, GILL's CLIPImageProcessor)."""
    if floor:
        left, top = (image.width - size) // 2, (image.height - size) // 2
    else:
        left = int(round((image.width - size) / 2.0))
        top = int(round((image.height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image) -> np.ndarray:
    """float64 CHW: /255, minus CLIP mean, divided by CLIP std."""
    pixels = np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0
    mean = np.asarray(CLIP_MEAN, dtype=np.float64)[:, None, None]
    std = np.asarray(CLIP_STD, dtype=np.float64)[:, None, None]
    return (pixels - mean) / std


def clip_processor_pixels(images, size: int, mean=CLIP_MEAN, std=CLIP_STD, crop: int | None = None) -> torch.Tensor:
    """(N, 3, crop, crop) float32 as transformers' ``CLIPImageProcessor`` (Pillow backend) makes them
    for GILL: shorter side to ``size``, floored centre crop to ``crop`` (default ``size``),
    ``x * (1/255)`` in float64 cast to float32, then float32 ``(x - mean) / std``."""
    crop = crop or size
    arrays = []
    for image in as_pil_images(images):
        cropped = center_crop(resize_bicubic(image, size), crop, floor=True)
        pixels = (np.asarray(cropped) * (1 / 255)).astype(np.float32)
        pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        arrays.append(pixels.transpose(2, 0, 1))
    if not arrays:
        return torch.zeros(0, 3, crop, crop)
    return torch.from_numpy(np.stack(arrays))


def preprocess_images(images, size: int) -> torch.Tensor:
    """(N, 3, size, size) float16 pixel values, rounded exactly like the official pipeline."""
    pil_images = as_pil_images(images)
    if not pil_images:
        return torch.zeros(0, 3, size, size, dtype=torch.float16)
    arrays = [normalize(center_crop(resize_bicubic(img, size), size)) for img in pil_images]
    return torch.from_numpy(np.stack(arrays)).to(torch.float16)
