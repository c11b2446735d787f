"""``python -m kosmosg_core``: encode, convert, bench."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import KosmosGError


def _encode(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from .loading import load_kosmosg

    encoder = load_kosmosg(args.checkpoint, args.tokenizer, dtype=args.dtype, device=args.device)
    out = encoder.encode(args.prompt, args.image or [], args.negative, intermediates=args.dump_intermediates)
    tensors = {"cond": out.cond, "uncond": out.uncond}
    if args.dump_intermediates:
        tensors.update(out.intermediates)
    tensors = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()
    }
    save_file(tensors, args.out, metadata={"prompt": args.prompt, "negative": args.negative or "", "dtype": args.dtype})
    print(json.dumps({"out": args.out, "cond": list(tensors["cond"].shape), "tensors": sorted(tensors)}))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert

    summary = convert(args.src, args.dst, tokenizer=args.tokenizer, embed_tokenizer=not args.no_tokenizer)
    if not summary["tokenizer_embedded"]:
        summary["note"] = "no tokenizer found beside the source: keep sentencepiece.bpe.model and dict.txt beside the output"
    print(json.dumps(summary))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    print(json.dumps(run_bench(args), indent=2))
    return 0


def _workflow(args: argparse.Namespace) -> int:
    from .runner import run_workflow

    return run_workflow(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kosmosg_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="prompt + images -> cond/uncond safetensors")
    enc.add_argument("--checkpoint", required=True, help="official checkpoint_final.pt or a converted .safetensors")
    enc.add_argument("--tokenizer", help="folder with sentencepiece.bpe.model and dict.txt (default: beside the checkpoint, or embedded)")
    enc.add_argument("--prompt", required=True, help="text with <i> (or <image1>, <image2>, ...) where images go")
    enc.add_argument("--image", action="append", help="image file, once per image, in placeholder order")
    enc.add_argument("--negative", default="", help="negative prompt (default: Kosmos-G's null embedding)")
    enc.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    enc.add_argument("--device", default="cpu", help="cpu or cuda")
    enc.add_argument("--out", required=True, help="output .safetensors")
    enc.add_argument("--dump-intermediates", action="store_true", help="also write tokens, pixels and hidden states")
    enc.set_defaults(run=_encode)

    conv = sub.add_parser("convert", help="official .pt -> .safetensors (streamed)")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--tokenizer", help="folder with the tokenizer files to embed (default: beside SRC)")
    conv.add_argument("--no-tokenizer", action="store_true", help="do not embed the tokenizer")
    conv.set_defaults(run=_convert)

    bench = sub.add_parser("bench", help="load/encode/FLOP-rate benchmark at the real size (JSON)")
    bench.add_argument("--size", choices=["real", "tiny"], default="real", help="tiny: a seconds-long smoke run")
    bench.add_argument("--workdir", default=None, help="where the random checkpoints go (default: a temp dir)")
    bench.add_argument("--dtypes", default="fp32,bf16")
    bench.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    bench.set_defaults(run=_bench)
    flow = sub.add_parser("workflow", help="run a ComfyUI workflow JSON headless in an embedded ComfyUI")
    flow.add_argument("file", help="workflow JSON (UI or API format), e.g. workflows/kosmos-g_multi-entity.json")
    flow.add_argument("--offline-smoke", action="store_true", help="run on tiny random weights made on the spot")
    flow.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH, the ComfyUI around this pack, or the test host)")
    flow.add_argument("--base-dir", help="ComfyUI base folder (models/, input/, output/) to use instead of the default")
    flow.add_argument("--steps", type=int, help="override the sampler steps")
    flow.add_argument("--size", help="override the latent size, e.g. 512x512")
    flow.set_defaults(run=_workflow)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KosmosGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
