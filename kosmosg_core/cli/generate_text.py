"""``generate-text``: GILL dialogue/captioning text, with image slots."""

from __future__ import annotations

import argparse
import json

from ..dtypes import DTYPE_NAMES
from .arguments import device, finite_float, int_range
from .common import load_gill, save_tensors


def add_parser(sub) -> None:
    gen = sub.add_parser("generate-text", help="GILL: dialogue/captioning text, with image slots")
    for flag, text in (("--checkpoint", "GILL release folder"), ("--llm", "OPT folder"), ("--vision", "CLIP folder")):
        gen.add_argument(flag, required=True, help=text)
    gen.add_argument("--index", help="retrieval index (for the older decision model)")
    gen.add_argument("--prompt", required=True, help="text with <i> where images go, e.g. 'Q: what is this <i>\\nA:'")
    gen.add_argument("--image", action="append")
    gen.add_argument("--max-new-tokens", type=int_range(0, 1_000_000), default=32)
    gen.add_argument("--temperature", type=finite_float(0.0, 1000.0), default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=finite_float(0.0, 1.0), default=1.0)
    gen.add_argument("--min-word-tokens", type=int_range(0, 1_000_000), default=0,
                     help="tokens before an image slot may appear")
    gen.add_argument("--ret-scale", type=finite_float(-1e4, 1e4), default=1.0,
                     help="scale of the [IMG0] logit (official ret_scale_factor)")
    gen.add_argument("--gen-scale", type=finite_float(-1e4, 1e4), default=1.0,
                     help="scale of the [IMG0] logit (official gen_scale_factor)")
    gen.add_argument("--seed", type=int_range(0, 2**63 - 1), default=None)
    gen.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    gen.add_argument("--device", type=device, default="cpu")
    gen.add_argument("--out", help="write the raw ids (greedy_ids when temperature is 0) and slot tensors")
    gen.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    gill = load_gill(args)
    result = gill.generate(args.prompt, args.image or [], args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, min_word_tokens=args.min_word_tokens, ret_scale=args.ret_scale,
                           gen_scale=args.gen_scale, seed=args.seed, stop_at_newline=args.out is None)
    slots = [{"decision": slot.choice, "p_gen_ret": None if slot.decision is None else slot.decision[0].tolist(),
              "note": slot.decision_note} for slot in result.slots]
    if args.out:
        tensors = {"greedy_ids" if args.temperature == 0 else "ids": result.ids}
        for i, slot in enumerate(result.slots):
            tensors[f"slot{i}.cond"], tensors[f"slot{i}.ret_emb"] = slot.cond, slot.ret_emb
        save_tensors(tensors, args.out, {"prompt": args.prompt, "text": result.text})
    print(json.dumps({"text": result.text, "image_slots": slots, "out": args.out}))
    return 0
