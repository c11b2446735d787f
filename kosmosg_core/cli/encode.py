"""``encode``: prompt + images -> conditioning safetensors (Kosmos-G or GILL)."""

from __future__ import annotations

import argparse
import json

from ..dtypes import DTYPE_NAMES
from .arguments import device
from .common import load_gill, save_tensors


def add_parser(sub) -> None:
    enc = sub.add_parser("encode", help="prompt + images -> conditioning safetensors (Kosmos-G or GILL)")
    enc.add_argument("--backend", choices=["kosmos-g", "gill"], default="kosmos-g")
    enc.add_argument("--checkpoint", required=True,
                     help="Kosmos-G: checkpoint_final.pt or a converted .safetensors; GILL: the release folder")
    enc.add_argument("--llm", help="GILL: OPT model folder (facebook/opt-6.7b layout)")
    enc.add_argument("--vision", help="GILL: CLIP folder (CLIPVisionModel or full CLIPModel)")
    enc.add_argument("--index", help="GILL: retrieval index (needed by the older decision model)")
    enc.add_argument("--tokenizer", help="folder with sentencepiece.bpe.model and dict.txt "
                                         "(default: beside the checkpoint, or embedded)")
    enc.add_argument("--prompt", required=True, help="text with <i> (or <image1>, <image2>, ...) where images go")
    enc.add_argument("--image", action="append", help="image file, once per image, in placeholder order")
    enc.add_argument("--negative", default="", help="negative prompt (default: Kosmos-G's null embedding)")
    enc.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    enc.add_argument("--device", type=device, default="cpu", help="cpu or cuda")
    enc.add_argument("--quantization", choices=["none", "int8"], default="none",
                     help="Kosmos-G: int8 weight-only (needs torchao)")
    enc.add_argument("--compile", action="store_true", help="Kosmos-G: torch.compile the MLLM and vision tower")
    enc.add_argument("--out", required=True, help="output .safetensors")
    enc.add_argument("--dump-intermediates", action="store_true", help="also write tokens, pixels and hidden states")
    enc.set_defaults(run=run)


def _encode_gill(args: argparse.Namespace) -> int:
    import torch

    gill = load_gill(args)
    slot, ids = gill.encode(args.prompt, args.image or [])
    tensors = {"cond": slot.cond, "ret_emb": slot.ret_emb}
    if slot.decision_logits is not None:
        tensors["decision"] = slot.decision
    if args.dump_intermediates:
        tensors.update(input_ids=torch.tensor([ids]), img_hidden=slot.img_hidden)
        if slot.decision_logits is not None:
            tensors["decision_logits"] = slot.decision_logits
    save_tensors(tensors, args.out, {"prompt": args.prompt, "backend": "gill", "decision_note": slot.decision_note})
    print(json.dumps({"out": args.out, "cond": list(slot.cond.shape), "decision": slot.choice,
                      "tensors": sorted(tensors)}))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.backend == "gill":
        return _encode_gill(args)
    from ..kosmosg.loading import load_kosmosg

    encoder = load_kosmosg(args.checkpoint, args.tokenizer, dtype=args.dtype, device=args.device,
                           quantization=args.quantization)
    if args.compile:
        encoder.compile()
    out = encoder.encode(args.prompt, args.image or [], args.negative, intermediates=args.dump_intermediates)
    tensors = {"cond": out.cond, "uncond": out.uncond}
    if args.dump_intermediates:
        tensors.update(out.intermediates)
    save_tensors(tensors, args.out, {"prompt": args.prompt, "negative": args.negative or "", "dtype": args.dtype})
    print(json.dumps({"out": args.out, "cond": list(out.cond.shape), "tensors": sorted(tensors)}))
    return 0
