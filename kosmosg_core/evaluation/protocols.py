"""The four protocols: defaults from the official evaluation scripts, and the run itself.

``python -m kosmosg_core eval dreambench|coco-fid|vist|visdial`` loads the dataset, generates
what is missing (resumable), scores, and writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

import torch

from ..dtypes import parse_dtype
from ..errors import KosmosGError
from . import datasets
from .generation import GillConditioner, KosmosGConditioner, Sampling, generate_missing, image_paths, is_main_process
from .published import PUBLISHED, SCORERS
from .report import write_results

# Official settings (Kosmos-G: sample_kosmosg_{dreambench,coco}.py; GILL: evals/generate_*_images.py).
PROTOCOLS = {
    "dreambench": {"backend": "kosmos-g", "title": "DreamBench (single image input)", "sampling": Sampling(
        scheduler="dpms", steps=100, guidance=7.5, per_prompt=4, seed=0, seed_per_item=False)},
    "coco-fid": {"backend": "kosmos-g", "title": "MS-COCO 2014 val zero-shot FID", "sampling": Sampling(
        scheduler="ddim", steps=250, guidance=3.0, per_prompt=1, seed=0, seed_per_item=False)},
    "vist": {"backend": "gill", "title": "VIST contextual image generation", "sampling": Sampling(
        scheduler="pndm", steps=50, guidance=7.5, per_prompt=1, seed=42, seed_per_item=True)},
    "visdial": {"backend": "gill", "title": "VisDial image generation", "sampling": Sampling(
        scheduler="pndm", steps=50, guidance=7.5, per_prompt=1, seed=42, seed_per_item=True)},
}


def load_items(args: argparse.Namespace) -> tuple[list, list, dict, list]:
    """(items, skipped, variant, published rows) for the protocol."""
    name = args.protocol
    if name == "dreambench":
        subjects = args.subjects.split(",") if args.subjects else None
        items = datasets.dreambench_items(args.data, args.prompt_style, subjects)
        return items, [], {"prompt_style": args.prompt_style}, PUBLISHED[name]
    if name == "coco-fid":
        items = datasets.coco_captions(args.data, args.captions, args.caption_seed)
        return items, [], {"captions": args.captions, "caption_seed": args.caption_seed}, PUBLISHED[name]
    if name == "vist":
        items, skipped = datasets.vist_items(args.data, args.context)
        return items, skipped, {"context": args.context}, PUBLISHED[name][args.context]
    items, skipped = datasets.visdial_items(args.data, args.rounds)
    return items, skipped, {"rounds": args.rounds}, PUBLISHED[name][args.rounds]


def sampling_for(args: argparse.Namespace) -> Sampling:
    default = PROTOCOLS[args.protocol]["sampling"]
    overrides = {k: getattr(args, k) for k in ("scheduler", "steps", "guidance", "per_prompt", "seed", "size")
                 if getattr(args, k) is not None}
    return Sampling(**{**asdict(default), **overrides, "batch_size": args.batch_size})


def _dtype(args: argparse.Namespace) -> torch.dtype:
    name = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    return parse_dtype(name)


def _conditioner(args: argparse.Namespace, pipe, dtype: torch.dtype):
    if PROTOCOLS[args.protocol]["backend"] == "kosmos-g":
        from ..kosmosg.loading import load_kosmosg

        return KosmosGConditioner(load_kosmosg(args.checkpoint, args.tokenizer, dtype=dtype, device=args.device))
    from ..gill import load_gill

    if not (args.llm and args.vision):
        raise KosmosGError("GILL protocols need --checkpoint (release folder), --llm (OPT-6.7B) "
                           "and --vision (CLIP ViT-L/14)")
    gill = load_gill(args.checkpoint, args.llm, args.vision, dtype={torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
        dtype, "fp32"), device=args.device)
    return GillConditioner(gill, pipe)


def _generate(args: argparse.Namespace, items: list, sampling: Sampling) -> None:
    from tqdm import tqdm

    from .sd_pipeline import load_sd15

    dtype = _dtype(args)
    pipe = load_sd15(args.sd, sampling.scheduler, dtype, args.device)
    conditioner = _conditioner(args, pipe, dtype)
    done = sum(all(os.path.exists(p) for p in image_paths(args.out, i, sampling.per_prompt)) for i in items)
    with tqdm(total=len(items), initial=done, unit="prompt", desc=f"generating {args.protocol}",
              file=sys.stderr) as bar:
        generate_missing(items, conditioner, pipe, sampling, args.out, progress=bar.update)


def _score(args: argparse.Namespace, items: list, sampling: Sampling) -> dict:
    from . import scoring

    generated = lambda item: image_paths(args.out, item, sampling.per_prompt)  # noqa: E731
    missing = [p for item in items for p in generated(item) if not os.path.exists(p)]
    if missing:
        raise KosmosGError(f"{len(missing)} generated image(s) are missing (first: {missing[0]}); "
                           "run without --score-only")
    device = args.scorer_device or args.device
    if args.protocol == "dreambench":
        return scoring.score_dreambench(items, generated, args.dino or SCORERS["dino"],
                                        args.clip or SCORERS["clip_b32"], device)
    if args.protocol == "coco-fid":
        real = datasets.coco_real_images(args.data)[: args.real_limit or None]
        return scoring.score_fid(real, [generated(i)[0] for i in items], args.fid_features,
                                 args.inception_weights, device)
    return scoring.score_clip_lpips(items, generated, args.clip or SCORERS["clip_l14"], args.lpips_net, device)


def _notes(args: argparse.Namespace, sampling: Sampling, items: list, full: int, skipped: list) -> tuple[list, bool]:
    default = PROTOCOLS[args.protocol]["sampling"]
    changed = [f"{k}={getattr(sampling, k)} (official {getattr(default, k)})"
               for k in ("scheduler", "steps", "guidance", "per_prompt", "seed", "size")
               if getattr(sampling, k) != getattr(default, k)]
    notes = []
    if changed:
        notes.append("settings differ from the official script: " + ", ".join(changed))
    if len(items) < full:
        notes.append(f"subset: {len(items)} of {full} items (--limit)")
    if skipped:
        notes.append(f"{len(skipped)} item(s) skipped because an image file is missing")
    if args.protocol == "coco-fid" and args.fid_features != "inception":
        notes.append(f"FID on {args.fid_features} features: not comparable with the published Inception FID")
    if args.protocol == "coco-fid" and args.real_limit:
        notes.append(f"real set limited to {args.real_limit} images (official: all of val2014)")
    notes.append("see the README's evaluation section for every known difference from the official scripts")
    return notes, not (changed or len(items) < full or (args.protocol == "coco-fid" and (
        args.fid_features != "inception" or args.real_limit)))


def run_eval(args: argparse.Namespace) -> int:
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per launched process
    items, skipped, variant, published = load_items(args)
    full = len(items)
    items = items[: args.limit] if args.limit else items
    if not items:
        raise KosmosGError(f"no {args.protocol} items to evaluate in {args.data}")
    sampling = sampling_for(args)
    if not args.score_only:
        _generate(args, items, sampling)
    if not is_main_process():
        return 0
    metrics = _score(args, items, sampling)
    notes, comparable = _notes(args, sampling, items, full, skipped)
    import diffusers
    import transformers

    result = {
        "protocol": args.protocol,
        "title": f"{PROTOCOLS[args.protocol]['title']} ({', '.join(f'{k}: {v}' for k, v in variant.items())})",
        "backend": PROTOCOLS[args.protocol]["backend"],
        "variant": variant, "sampling": asdict(sampling), "items": len(items), "skipped": len(skipped),
        "metrics": metrics, "published": published, "comparable_with_published": comparable, "notes": notes,
        "data": os.path.abspath(args.data), "checkpoint": args.checkpoint, "sd": args.sd,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
    }
    json_path, md_path = write_results(args.out, result)
    print(json.dumps({"results": json_path, "table": md_path, "metrics": metrics}))
    return 0
