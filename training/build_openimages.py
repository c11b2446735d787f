"""OpenImages-style composition data (Kosmos-G stage 3): caption -> entities -> masks -> crops.

    python -m training.build_openimages --images photos/ --out shards/ \\
        [--captioner MODULE:FUNCTION] [--extractor MODULE:FUNCTION] [--segmenter MODULE:FUNCTION]

The three models are pluggable callables:
* ``captioner(image) -> str`` (paper: BLIP-2; default here: ``Salesforce/blip2-opt-2.7b`` via transformers);
* ``extractor(caption) -> list[str]`` (paper: MPT-7B-instruct listing the foreground nouns);
* ``segmenter(image, entity) -> bool mask (H, W)`` (official: CLIPSeg ``CIDAS/clipseg-rd64-refined``,
  sigmoid > 0.3).
Entities are kept only if they occur in the caption, colour words and entities contained in another
entity are dropped, and they are ordered by position in the caption (official rules). For each, a
square crop around the mask's bounding box (clamped to the image) is stored twice: with background,
and with everything outside the mask set to white. Samples are written in the ``composition``
layout of ``training/data.py``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from kosmosg_core.errors import InputFileError
from kosmosg_core.image_processing import load_image_file
from kosmosg_core.safe_files import refuse_input_as_output, regular_file
from training.data import ShardWriter
from training.engine import UsageError, new_parser, run_main

COLOURS = {"red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown", "gray", "grey"}


def clean_entities(caption: str, entities: list[str]) -> list[str]:
    kept = [e.strip() for e in entities if e.strip() and e.strip().lower() not in COLOURS and e.strip() in caption]
    kept = [e for e in dict.fromkeys(kept) if not any(e != other and e in other for other in kept)]
    return sorted(kept, key=caption.find)


def square_crop_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = min(max(bottom - top, right - left), mask.shape[0], mask.shape[1])
    cy, cx = (top + bottom) // 2, (left + right) // 2
    top = int(np.clip(cy - side // 2, 0, mask.shape[0] - side))
    left = int(np.clip(cx - side // 2, 0, mask.shape[1] - side))
    return left, top, left + side, top + side


def compose_sample(image: Image.Image, captioner, extractor, segmenter, size: int = 512, crop_size: int = 512):
    """(meta, images) of one composition sample, or None when no entity survives."""
    caption = captioner(image)
    entities, crops = [], {}
    for name in clean_entities(caption, extractor(caption)):
        mask = np.asarray(segmenter(image, name), dtype=bool)
        box = square_crop_box(mask)
        if box is None:
            continue
        index = len(entities)
        white = np.asarray(image).copy()
        white[~mask] = 255
        crops[f"crop{index}"] = image.crop(box).resize((crop_size, crop_size), Image.BICUBIC)
        crops[f"crop{index}_white"] = Image.fromarray(white).crop(box).resize((crop_size, crop_size), Image.BICUBIC)
        entities.append({"name": name})
    if not entities:
        return None
    meta = {"kind": "composition", "caption": caption, "entities": entities}
    return meta, {"target": image.resize((size, size), Image.BICUBIC), **crops}


def load_callable(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise UsageError(f"{spec!r} is not MODULE:FUNCTION.")
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module} for {spec!r}: {exc}.") from None
    except AttributeError:
        raise UsageError(f"{module} has no {name} (from {spec!r}).") from None
    if not callable(found):
        raise UsageError(f"{spec!r} is not callable.")
    return found


def blip2_captioner(model_id: str = "Salesforce/blip2-opt-2.7b"):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor, model = Blip2Processor.from_pretrained(model_id), Blip2ForConditionalGeneration.from_pretrained(model_id)
    return lambda image: processor.decode(model.generate(**processor(images=image, return_tensors="pt"))[0],
                                          skip_special_tokens=True).strip()


def clipseg_segmenter(model_id: str = "CIDAS/clipseg-rd64-refined", threshold: float = 0.3):
    import torch
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    processor, model = CLIPSegProcessor.from_pretrained(model_id), CLIPSegForImageSegmentation.from_pretrained(model_id)

    def segment(image, entity):
        with torch.no_grad():
            logits = model(**processor(text=[entity], images=[image], return_tensors="pt")).logits
        mask = torch.sigmoid(logits).reshape(1, 1, *logits.shape[-2:])
        mask = torch.nn.functional.interpolate(mask, size=image.size[::-1], mode="bilinear")[0, 0]
        return (mask > threshold).numpy()

    return segment


def run(argv) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--images", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--captioner", help="MODULE:FUNCTION returning image -> caption (default BLIP-2)")
    parser.add_argument("--extractor", required=True, help="MODULE:FUNCTION returning caption -> entity names")
    parser.add_argument("--segmenter", help="MODULE:FUNCTION returning (image, entity) -> mask (default CLIPSeg)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    args = parser.parse_args(argv)
    if not 8 <= args.size <= 4096:
        raise UsageError(f"--size must be between 8 and 4096, got {args.size}.")
    if args.per_shard < 1:
        raise UsageError(f"--per-shard must be at least 1, got {args.per_shard}.")
    refuse_input_as_output(args.out, [args.images], "--out")
    try:
        names = sorted(os.listdir(args.images))
    except OSError as exc:
        raise InputFileError(f"cannot read --images {args.images}: {exc.strerror or exc}; "
                             "give a folder of images.") from None
    extractor = load_callable(args.extractor)
    captioner = load_callable(args.captioner) if args.captioner else blip2_captioner()
    segmenter = load_callable(args.segmenter) if args.segmenter else clipseg_segmenter()
    inputs = [args.images]
    with ShardWriter(args.out, args.per_shard, overwrite=args.overwrite, inputs=inputs) as writer:
        for name in names:
            if name.lower().endswith((".png", ".jpg", ".jpeg", ".webp")):
                path = os.path.join(args.images, name)
                inputs.append(path)
                sample = compose_sample(load_image_file(regular_file(path, "image")), captioner, extractor,
                                        segmenter, args.size, args.size)
                if sample is not None:
                    writer.write(*sample)
    print(f"wrote {writer.count} samples to {args.out}")
    return 0


def main(argv=None) -> int:
    return run_main(run, argv, "training.build_openimages")


if __name__ == "__main__":
    raise SystemExit(main())
