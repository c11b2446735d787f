"""``eval``: the papers' protocols; its arguments (light: the protocols load only when one runs)."""

from __future__ import annotations

import argparse

from ..dtypes import DTYPE_NAMES
from ..evaluation.datasets import PROMPT_STYLES, VIST_CONTEXTS
from ..evaluation.published import SCORERS
from .arguments import device, finite_float, int_range


def _run(args: argparse.Namespace) -> int:
    from ..evaluation.protocols import run_eval

    return run_eval(args)


def add_eval_parser(sub) -> None:
    """``eval <protocol>`` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, help="dataset folder in its published layout")
    common.add_argument("--sd", required=True,
                        help="diffusers SD 1.5 folder (unet/, vae/, scheduler/, text_encoder/, tokenizer/)")
    common.add_argument("--checkpoint", required=True, help="Kosmos-G: checkpoint_final.pt; GILL: the release folder")
    common.add_argument("--out", required=True,
                        help="results folder (images/, results.json, results.md); reruns resume")
    common.add_argument("--device", type=device, help="default: cuda when available, else cpu")
    common.add_argument("--dtype", choices=DTYPE_NAMES, help="default: fp16 on CUDA (as the official code), else fp32")
    common.add_argument("--batch-size", type=int_range(1, 1024), default=1, help="prompts per U-Net batch")
    common.add_argument("--limit", type=int_range(1, 10**9),
                        help="only the first N items (a quick, non-comparable run)")
    common.add_argument("--score-only", action="store_true", help="score the images already in --out")
    common.add_argument("--scorer-device", type=device, help="device for the metric models (default: --device)")
    kinds = {"scheduler": str, "steps": int_range(1, 10_000), "guidance": finite_float(0.0, 100.0),
             "per-prompt": int_range(1, 1000), "seed": int_range(0, 2**63 - 1), "size": int_range(8, 4096)}
    for flag, kind in kinds.items():
        common.add_argument(f"--{flag}", type=kind, help="override the official setting (the run is then labelled)")
    ev = sub.add_parser("eval", help="reproduce the papers' benchmarks (results.json + results.md)")
    protocols = ev.add_subparsers(dest="protocol", required=True)

    dream = protocols.add_parser("dreambench", parents=[common], help="Kosmos-G: DINO, CLIP-I, CLIP-T on DreamBench")
    dream.add_argument("--tokenizer", help="Kosmos-G tokenizer folder (default: beside the checkpoint)")
    dream.add_argument("--prompt-style", choices=PROMPT_STYLES, default="script",
                       help="script: '<i> in the jungle' (class word dropped, official default); "
                            "paper: '<i> <class> ...'")
    dream.add_argument("--subjects", help="comma-separated subset of subjects")
    dream.add_argument("--dino", help=f"DINO scorer (default {SCORERS['dino']})")
    dream.add_argument("--clip", help=f"CLIP scorer (default {SCORERS['clip_b32']})")

    coco = protocols.add_parser("coco-fid", parents=[common], help="Kosmos-G: zero-shot FID on MS-COCO 2014 val")
    coco.add_argument("--tokenizer", help="Kosmos-G tokenizer folder (default: beside the checkpoint)")
    coco.add_argument("--captions", type=int_range(1, 10**7), default=30000,
                      help="captions sampled from the annotations (official 30000)")
    coco.add_argument("--caption-seed", type=int, default=0)
    coco.add_argument("--real-limit", type=int_range(1, 10**9), help="use only the first N real images (official: all)")
    coco.add_argument("--fid-features", default="inception", help="inception (published protocol) or clip:<model>")
    coco.add_argument("--inception-weights", help="local copy of torch-fidelity's Inception weights (offline runs)")

    for name, text in (("vist", "GILL: CLIP similarity and LPIPS on VIST"),
                       ("visdial", "GILL: CLIP similarity and LPIPS on VisDial")):
        parser = protocols.add_parser(name, parents=[common], help=text)
        parser.add_argument("--llm", help="OPT-6.7B folder")
        parser.add_argument("--vision", help="CLIP ViT-L/14 folder (GILL's visual encoder)")
        parser.add_argument("--clip", help=f"CLIP scorer (default {SCORERS['clip_l14']})")
        parser.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
        if name == "vist":
            parser.add_argument("--context", choices=VIST_CONTEXTS, default="captions+images",
                                help="captions+images (the script), captions (5 captions), last-caption (1 caption)")
        else:
            parser.add_argument("--rounds", type=int, choices=[1, 5, 10], default=10,
                                help="dialogue rounds (script: 10)")
    ev.set_defaults(run=_run)


add_parser = add_eval_parser
