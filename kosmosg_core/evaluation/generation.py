"""Resumable, batched generation of a protocol's images with our conditioning.

Images are written atomically as ``images/<key>.png`` (``<key>_<n>.png`` for several per
prompt); an item whose files all exist is skipped, so a stopped run picks up where it was.
Under ``accelerate launch`` / ``torchrun`` the items are split between processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..image_processing import load_image_file
from ..safe_files import atomic_write_with
from .datasets import EvalItem
from .sd_pipeline import empty_prompt_embedding, generate_images


@dataclass
class Sampling:
    scheduler: str
    steps: int
    guidance: float
    per_prompt: int
    seed: int
    seed_per_item: bool  # False: every item starts from `seed` (Kosmos-G); True: seed + item index (GILL)
    size: int = 512
    batch_size: int = 1

    def seed_for(self, index: int) -> int:
        return self.seed + index if self.seed_per_item else self.seed


def image_paths(out_dir: str, item: EvalItem, per_prompt: int) -> list[str]:
    folder = os.path.join(out_dir, "images")
    if per_prompt == 1:
        return [os.path.join(folder, f"{item.key}.png")]
    return [os.path.join(folder, f"{item.key}_{n}.png") for n in range(per_prompt)]


class KosmosGConditioner:
    """cond and Kosmos-G's null-embedding uncond for a batch, as the nodes compute them."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, items: Sequence[EvalItem]) -> tuple[torch.Tensor, torch.Tensor]:
        # paths, as the nodes' files
        out = self.encoder.encode_batch([i.prompt for i in items], [i.images for i in items])
        return out.cond, out.uncond


class GillConditioner:
    """GILL's [IMG] conditioning (forced image slot) and SD's empty-prompt negative.

    Input images are resized to 224x224 RGB first, as GILL's eval scripts do."""

    def __init__(self, gill, pipe):
        self.gill, self.uncond = gill, empty_prompt_embedding(pipe)

    def __call__(self, items: Sequence[EvalItem]) -> tuple[torch.Tensor, torch.Tensor]:
        conds = []
        for item in items:
            images = [load_image_file(p).resize((224, 224)) for p in item.images]
            conds.append(self.gill.encode(item.prompt, images)[0].cond)
        return torch.cat(conds), self.uncond


def _distributed():
    """accelerate's process state when launched on several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def _save(image: Image.Image, path: str) -> None:
    atomic_write_with(path, image.save)


def generate_missing(items: Sequence[EvalItem], conditioner: Callable, pipe, sampling: Sampling, out_dir: str,
                     progress: Callable[[int], None] | None = None) -> int:
    """Generate every item without all its images; returns how many items were generated."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    todo = [(index, item) for index, item in enumerate(items)
            if not all(os.path.exists(p) for p in image_paths(out_dir, item, sampling.per_prompt))]
    state = _distributed()
    if state is not None:
        todo = todo[state.process_index :: state.num_processes]
    for start in range(0, len(todo), sampling.batch_size):
        batch = todo[start : start + sampling.batch_size]
        cond, uncond = conditioner([item for _, item in batch])
        images = generate_images(pipe, cond, uncond, [sampling.seed_for(i) for i, _ in batch], sampling.per_prompt,
                                 sampling.steps, sampling.guidance, sampling.size, sampling.size)
        paths = [p for _, item in batch for p in image_paths(out_dir, item, sampling.per_prompt)]
        for image, path in zip(images, paths, strict=True):
            _save(image, path)
        if progress:
            progress(len(batch))
    if state is not None:
        state.wait_for_everyone()
    return len(todo)


def is_main_process() -> bool:
    state = _distributed()
    return state is None or state.is_main_process
