"""ComfyUI glue shared by the node families: model folders, memory management, progress.

Models are full-loaded (``force_full_load``): the MLLM is built from transformers' Kosmos-2
modules, not from ``comfy.ops`` layers, so ComfyUI cannot split it across devices. In fp16 the
Kosmos-G encoder needs about 3.8 GB of VRAM while it encodes; ComfyUI evicts it for the U-Net
afterwards like any other model.
"""

from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from kosmosg_core.comfy_host import name_problem
from kosmosg_core.dtypes import parse_dtype
from kosmosg_core.errors import CheckpointError, ImageError
from kosmosg_core.kosmosg.encoder import KosmosGEncoder

CHECKPOINT_EXTENSIONS = {".pt", ".pth", ".safetensors"}


def register_model_folder(name: str) -> None:
    """``models/<name>``, keeping folders a user declared in ``extra_model_paths.yaml``."""
    default = os.path.join(folder_paths.models_dir, name)
    paths, extensions = folder_paths.folder_names_and_paths.get(name, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[name] = (paths, set(extensions) | CHECKPOINT_EXTENSIONS)


def model_folders(name: str) -> list[str]:
    return list(folder_paths.get_folder_paths(name))


def missing_file_message(name: str, filename: str, what: str) -> str:
    folders = model_folders(name)
    return (
        f"{filename!r} is not in the {name} model folder(s): {'; '.join(folders)}. {what} "
        f"Put it in one of those folders (or add a '{name}:' entry to extra_model_paths.yaml) and refresh."
    )


def check_model_name(name, what: str, folder: str) -> str:
    """A file or folder name picked in a dropdown (or written into a workflow) that stays inside the
    model folders: no ``..``, no absolute path, no NUL byte. A bad one is a one-line CheckpointError."""
    problem = name_problem(name)
    if problem or not isinstance(name, str):
        raise CheckpointError(f"{what} {name!r:.200} {problem or 'is not a name'}: pick a {what} from the list; it "
                              f"must be a name inside the {folder} model folder(s): "
                              f"{'; '.join(model_folders(folder))}.")
    return name


def inside_folder(path: str, root: str) -> bool:
    """``path`` (links resolved) is ``root`` or below it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real.startswith(base.rstrip(os.sep) + os.sep)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU (bf16 is only fast on CPUs with AMX), else ComfyUI's text-encoder policy."""
    if choice != "auto":
        return parse_dtype(choice)
    if mm.is_device_cpu(device):
        return torch.float32
    dtype = mm.text_encoder_dtype(device)
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def resolve_devices(choice: str) -> tuple[torch.device, torch.device]:
    """(load device, offload device) for a text encoder, as ComfyUI's own CLIP loaders pick them."""
    if choice == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    if choice == "gpu":
        return mm.get_torch_device(), mm.text_encoder_offload_device()
    return mm.text_encoder_device(), mm.text_encoder_offload_device()


class ModuleContainer(torch.nn.Module):
    """Plain module around the model: ``ModelPatcher`` sets ``.device``, which HF models refuse."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.model = model
        self.device = device


def progress_callback(total_hint: int | None = None):
    """Per-layer callback: honours the Cancel button and moves the node's progress bar."""
    bar = None

    def callback(done: int, total: int) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(total_hint or total)
        bar.update_absolute(min(done + 1, total), total)

    return callback


# Socket types of the pack (names are stored in workflows: never rename them)
KosmosGSocket = io.Custom("KOSMOSG")
KosmosGImages = io.Custom("KOSMOSG_IMAGES")

# Fixed image_1..image_4 sockets, not a growing input: io.Autogrow exists only in 0.33.0 (0.3.75 has
# AutogrowDynamic, a different class), and workflows store these four names.
MAX_IMAGE_SOCKETS = 4


def image_inputs() -> list:
    """Optional ``image_1..4`` sockets (a batch counts as several images) and ``more_images``."""
    sockets = [io.Image.Input(f"image_{i}", optional=True, tooltip=(
        "Images fill the <i> placeholders in order: image_1, image_2, ..., then more_images. "
        "A batch counts as several images, in batch order.")) for i in range(1, MAX_IMAGE_SOCKETS + 1)]
    sockets.append(KosmosGImages.Input("more_images", optional=True, tooltip=(
        "More images, of any sizes, collected with KosmosG Image List; they come after image_1..image_4.")))
    return sockets


def frames(images, socket: str = "image") -> list[torch.Tensor]:
    """A [B,H,W,C] IMAGE batch is B separate images ([H,W,C] is one); anything else is named."""
    if images is None:
        return []
    if not isinstance(images, torch.Tensor):
        raise ImageError(f"{socket} got {type(images).__name__}, not an IMAGE: "
                         "connect an IMAGE output (e.g. Load Image).")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or 0 in images.shape:
        raise ImageError(f"{socket} got a tensor of shape {tuple(images.shape)}; an IMAGE is [batch, height, width, "
                         "channels] with 1, 3 or 4 channels. Check the node that makes it.")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise ImageError(f"{socket} got a {images.dtype} tensor; an IMAGE holds floats from 0 to 1.")
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ImageError(f"{socket} holds NaN or infinite pixel values. Check the node that makes the image.")
    return list(images)


def collect_images(sockets: dict, more_images=None) -> list[torch.Tensor]:
    """Images in prompt order: image_1's batch, image_2, ..., then ``more_images``."""
    found = [f for i in range(1, MAX_IMAGE_SOCKETS + 1) for f in frames(sockets.get(f"image_{i}"), f"image_{i}")]
    if more_images is not None and not isinstance(more_images, (list, tuple)):
        raise ImageError(f"more_images got {type(more_images).__name__}; connect a KosmosG Image List.")
    for frame in more_images or ():
        found += frames(frame, "more_images")
    return found


def as_conditioning(embeds: torch.Tensor) -> list:
    """One CONDITIONING entry per row: float32 on the intermediate device, zero ``pooled_output``.

    Kosmos-G has no pooled vector; the SD 1.5 U-Net ignores ``pooled_output``, but other nodes
    (ConditioningAverage, ZeroOut) expect the key, so it carries zeros of the embedding width.
    """
    device = mm.intermediate_device()
    result = []
    for row in embeds:
        tokens = row.unsqueeze(0).float().to(device)
        result.append([tokens, {"pooled_output": torch.zeros(1, tokens.shape[-1], device=device)}])
    return result


def managed(modules: list[torch.nn.Module], load_device, offload_device):
    """A ModelPatcher over several modules that ComfyUI loads and offloads as one model."""
    container = ModuleContainer(torch.nn.ModuleList(modules), offload_device)
    return comfy.model_patcher.ModelPatcher(container, load_device=load_device, offload_device=offload_device)


class KosmosGRuntime:
    """What flows through a ``KOSMOSG`` socket: the encoder plus its ModelPatcher."""

    def __init__(self, encoder: KosmosGEncoder, load_device: torch.device, offload_device: torch.device):
        self.encoder = encoder
        self.patcher = comfy.model_patcher.ModelPatcher(
            ModuleContainer(encoder.model, offload_device), load_device=load_device, offload_device=offload_device
        )

    def activation_bytes(self, tokens: int, images: int) -> int:
        config, item = self.encoder.config, torch.empty((), dtype=self.encoder.dtype).element_size()
        text = tokens * (config.text_ffn_dim + 4 * config.text_dim) * item * 4
        vision = images * ((config.image_size // config.patch_size) ** 2 + 1) * config.vision_ffn_dim * item * 4
        return text + vision + (64 << 20)

    def encode(self, prompt: str, images: list, negative: str) -> tuple[list, list]:
        layout = self.encoder.layout(prompt, len(images))  # errors before any model is moved
        mm.load_models_gpu(
            [self.patcher], memory_required=self.activation_bytes(len(layout.tokens), len(images)), force_full_load=True
        )
        out = self.encoder.encode(prompt, images, negative, callback=progress_callback())
        return as_conditioning(out.cond), as_conditioning(out.uncond)
