"""``convert``: official .pt -> .safetensors (streamed)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    conv = sub.add_parser("convert", help="official .pt -> .safetensors (streamed)")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--tokenizer", help="folder with the tokenizer files to embed (default: beside SRC)")
    conv.add_argument("--no-tokenizer", action="store_true", help="do not embed the tokenizer")
    conv.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..kosmosg.convert import convert

    summary = convert(args.src, args.dst, tokenizer=args.tokenizer, embed_tokenizer=not args.no_tokenizer)
    if not summary["tokenizer_embedded"]:
        summary["note"] = ("no tokenizer found beside the source: "
                           "keep sentencepiece.bpe.model and dict.txt beside the output")
    print(json.dumps(summary))
    return 0
