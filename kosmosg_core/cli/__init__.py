"""``python -m kosmosg_core``: encode, convert, bench, download, eval."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .arguments import device, finite_float, int_range
from ..errors import KosmosGError, guarded_main
from ..safe_files import atomic_write_with, refuse_input_as_output


def _save(tensors: dict, path: str, metadata: dict) -> None:
    """float32 for floating tensors, contiguous CPU copies, safetensors; written temp-then-rename."""
    from safetensors.torch import save_file

    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _inputs(args: argparse.Namespace) -> list[str]:
    """Every file or folder the command reads: no output may be one of them (or a file in them)."""
    names = ("checkpoint", "llm", "vision", "index", "tokenizer", "source", "src", "data", "sd", "inception_weights")
    found = [getattr(args, name, None) for name in names]
    found += list(getattr(args, "image", None) or [])
    for checkpoint in (getattr(args, "checkpoint", None), getattr(args, "src", None)):
        if checkpoint and os.path.isfile(checkpoint):  # the tokenizer files beside it
            folder = os.path.dirname(os.path.abspath(checkpoint))
            found += [os.path.join(folder, name) for name in ("sentencepiece.bpe.model", "dict.txt")]
    return [item for item in found if item]


def _check_output(args: argparse.Namespace, flag: str = "--out", inside_folders: bool = True) -> None:
    out = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    if out:
        refuse_input_as_output(out, _inputs(args), flag, inside_folders)


def _load_gill(args: argparse.Namespace):
    from ..gill import load_gill

    missing = [flag for flag in ("checkpoint", "llm", "vision") if not getattr(args, flag)]
    if missing:
        raise KosmosGError(f"GILL needs --{' --'.join(missing)}: the release folder, an OPT folder and a CLIP folder.")
    gill = load_gill(args.checkpoint, args.llm, args.vision, dtype=args.dtype, device=args.device)
    if getattr(args, "index", None):
        from ..gill.retrieval import RetrievalIndex

        gill.index = RetrievalIndex.load(args.index)
    return gill


def _encode_gill(args: argparse.Namespace) -> int:
    import torch

    gill = _load_gill(args)
    slot, ids = gill.encode(args.prompt, args.image or [])
    tensors = {"cond": slot.cond, "ret_emb": slot.ret_emb}
    if slot.decision_logits is not None:
        tensors["decision"] = slot.decision
    if args.dump_intermediates:
        tensors.update(input_ids=torch.tensor([ids]), img_hidden=slot.img_hidden)
        if slot.decision_logits is not None:
            tensors["decision_logits"] = slot.decision_logits
    _save(tensors, args.out, {"prompt": args.prompt, "backend": "gill", "decision_note": slot.decision_note})
    print(json.dumps({"out": args.out, "cond": list(slot.cond.shape), "decision": slot.choice, "tensors": sorted(tensors)}))
    return 0


def _generate_text(args: argparse.Namespace) -> int:
    gill = _load_gill(args)
    result = gill.generate(args.prompt, args.image or [], args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, min_word_tokens=args.min_word_tokens, ret_scale=args.ret_scale,
                           gen_scale=args.gen_scale, seed=args.seed, stop_at_newline=args.out is None)
    slots = [{"decision": slot.choice, "p_gen_ret": None if slot.decision is None else slot.decision[0].tolist(),
              "note": slot.decision_note} for slot in result.slots]
    if args.out:
        tensors = {"greedy_ids" if args.temperature == 0 else "ids": result.ids}
        for i, slot in enumerate(result.slots):
            tensors[f"slot{i}.cond"], tensors[f"slot{i}.ret_emb"] = slot.cond, slot.ret_emb
        _save(tensors, args.out, {"prompt": args.prompt, "text": result.text})
    print(json.dumps({"text": result.text, "image_slots": slots, "out": args.out}))
    return 0


def _gill_index(args: argparse.Namespace) -> int:
    from ..gill.retrieval import RetrievalIndex, build_index

    if args.action == "import":
        index = RetrievalIndex.import_official(args.source)
    else:
        from tqdm import tqdm

        gill = _load_gill(args)
        bar = tqdm(total=None, unit="img", desc="embedding images", file=sys.stderr)

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        try:
            index = build_index(gill, args.source, progress=progress)
        finally:
            bar.close()  # ends the bar's line, so an error is a line of its own
    atomic_write_with(args.out, index.save)
    print(json.dumps({"out": args.out, "images": len(index.paths), "dim": int(index.embeddings.shape[1])}))
    return 0


def _encode(args: argparse.Namespace) -> int:
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
    _save(tensors, args.out, {"prompt": args.prompt, "negative": args.negative or "", "dtype": args.dtype})
    print(json.dumps({"out": args.out, "cond": list(out.cond.shape), "tensors": sorted(tensors)}))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..kosmosg.convert import convert

    summary = convert(args.src, args.dst, tokenizer=args.tokenizer, embed_tokenizer=not args.no_tokenizer)
    if not summary["tokenizer_embedded"]:
        summary["note"] = "no tokenizer found beside the source: keep sentencepiece.bpe.model and dict.txt beside the output"
    print(json.dumps(summary))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    print(json.dumps(run_bench(args), indent=2))
    return 0


def _workflow(args: argparse.Namespace) -> int:
    from ..comfy_host import run_workflow

    return run_workflow(args)


def _download(args: argparse.Namespace) -> int:
    from ..download import download

    download(args.model, args.dest, args.mirror)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the pack's error format: one ``error:`` line naming the command, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from ..download import MANIFEST, MIRROR_ENV

    parser = _Parser(prog="python -m kosmosg_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="prompt + images -> conditioning safetensors (Kosmos-G or GILL)")
    enc.add_argument("--backend", choices=["kosmos-g", "gill"], default="kosmos-g")
    enc.add_argument("--checkpoint", required=True,
                     help="Kosmos-G: checkpoint_final.pt or a converted .safetensors; GILL: the release folder")
    enc.add_argument("--llm", help="GILL: OPT model folder (facebook/opt-6.7b layout)")
    enc.add_argument("--vision", help="GILL: CLIP folder (CLIPVisionModel or full CLIPModel)")
    enc.add_argument("--index", help="GILL: retrieval index (needed by the older decision model)")
    enc.add_argument("--tokenizer", help="folder with sentencepiece.bpe.model and dict.txt (default: beside the checkpoint, or embedded)")
    enc.add_argument("--prompt", required=True, help="text with <i> (or <image1>, <image2>, ...) where images go")
    enc.add_argument("--image", action="append", help="image file, once per image, in placeholder order")
    enc.add_argument("--negative", default="", help="negative prompt (default: Kosmos-G's null embedding)")
    enc.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    enc.add_argument("--device", type=device, default="cpu", help="cpu or cuda")
    enc.add_argument("--quantization", choices=["none", "int8"], default="none",
                     help="Kosmos-G: int8 weight-only (needs torchao)")
    enc.add_argument("--compile", action="store_true", help="Kosmos-G: torch.compile the MLLM and vision tower")
    enc.add_argument("--out", required=True, help="output .safetensors")
    enc.add_argument("--dump-intermediates", action="store_true", help="also write tokens, pixels and hidden states")
    enc.set_defaults(run=_encode)

    gen = sub.add_parser("generate-text", help="GILL: dialogue/captioning text, with image slots")
    for flag, text in (("--checkpoint", "GILL release folder"), ("--llm", "OPT folder"), ("--vision", "CLIP folder")):
        gen.add_argument(flag, required=True, help=text)
    gen.add_argument("--index", help="retrieval index (for the older decision model)")
    gen.add_argument("--prompt", required=True, help="text with <i> where images go, e.g. 'Q: what is this <i>\\nA:'")
    gen.add_argument("--image", action="append")
    gen.add_argument("--max-new-tokens", type=int_range(0, 1_000_000), default=32)
    gen.add_argument("--temperature", type=finite_float(0.0, 1000.0), default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=finite_float(0.0, 1.0), default=1.0)
    gen.add_argument("--min-word-tokens", type=int_range(0, 1_000_000), default=0, help="tokens before an image slot may appear")
    gen.add_argument("--ret-scale", type=finite_float(-1e4, 1e4), default=1.0, help="scale of the [IMG0] logit (official ret_scale_factor)")
    gen.add_argument("--gen-scale", type=finite_float(-1e4, 1e4), default=1.0, help="scale of the [IMG0] logit (official gen_scale_factor)")
    gen.add_argument("--seed", type=int_range(0, 2**63 - 1), default=None)
    gen.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    gen.add_argument("--device", type=device, default="cpu")
    gen.add_argument("--out", help="write the raw ids (greedy_ids when temperature is 0) and slot tensors")
    gen.set_defaults(run=_generate_text)

    index = sub.add_parser("gill-index", help="GILL retrieval index: build from a folder, or import the official file")
    index.add_argument("action", choices=["build", "import"])
    index.add_argument("source", help="build: image folder; import: cc3m_embeddings_urls.npy (a pickle)")
    index.add_argument("--out", required=True, help="index .safetensors")
    for flag in ("--checkpoint", "--llm", "--vision"):
        index.add_argument(flag, help="build: GILL release / OPT / CLIP folders")
    index.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    index.add_argument("--device", type=device, default="cpu")
    index.set_defaults(run=_gill_index)

    conv = sub.add_parser("convert", help="official .pt -> .safetensors (streamed)")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--tokenizer", help="folder with the tokenizer files to embed (default: beside SRC)")
    conv.add_argument("--no-tokenizer", action="store_true", help="do not embed the tokenizer")
    conv.set_defaults(run=_convert)

    bench = sub.add_parser("bench", help="load/encode/FLOP-rate benchmark at the real size (JSON)")
    bench.add_argument("--size", choices=["real", "tiny"], default="real", help="tiny: a seconds-long smoke run")
    bench.add_argument("--workdir", default=None, help="folder in which a fresh kosmosg-bench-* folder holds the random checkpoints (default: the temp dir)")
    bench.add_argument("--dtypes", default="fp32,bf16")
    bench.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    bench.add_argument("--gill", action="store_true", help="also time GILL generation with/without the KV cache "
                       "(real size: width 4096 at 2 and 4 layers, extrapolated to 32)")
    bench.add_argument("--int8", action="store_true", help="also load and encode with int8 weights (needs torchao)")
    bench.add_argument("--compile", action="store_true", help="also encode with torch.compile (compile time reported)")
    bench.set_defaults(run=_bench)
    flow = sub.add_parser("workflow", help="run a ComfyUI workflow JSON headless in an embedded ComfyUI")
    flow.add_argument("file", help="workflow JSON (UI or API format), e.g. workflows/kosmos-g_multi-entity.json")
    flow.add_argument("--offline-smoke", action="store_true", help="run on tiny random weights made on the spot")
    flow.add_argument("--comfyui", help="ComfyUI folder (default: COMFYUI_PATH, the ComfyUI around this pack, or the test host)")
    flow.add_argument("--base-dir", help="ComfyUI base folder (models/, input/, output/) to use instead of the default")
    flow.add_argument("--steps", type=int_range(1, 10_000), help="override the sampler steps")
    flow.add_argument("--size", help="override the latent size, e.g. 512x512")
    flow.set_defaults(run=_workflow)

    fetch = sub.add_parser("download", help="fetch the released weights into ComfyUI's models/ (resumable, verified)")
    fetch.add_argument("model", choices=list(MANIFEST),
                       help="kosmos-g: checkpoint + tokenizer; gill: release + OPT-6.7B + CLIP; sd15: SD 1.5 checkpoint")
    fetch.add_argument("--dest", metavar="DIR", help="ComfyUI's models/ folder (default: the ComfyUI around "
                                                     "this pack, else comfy_home/models of the test host)")
    fetch.add_argument("--mirror", metavar="URL", help=f"fetch https://HOST/PATH as MIRROR/HOST/PATH (default: ${MIRROR_ENV})")
    fetch.set_defaults(run=_download)

    from ..evaluation.cli import add_eval_parser

    add_eval_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("encode", "generate-text", "gill-index"):
        _check_output(args)
    elif args.command == "convert":
        _check_output(args, "dst")
    elif args.command == "eval":  # --out is a results folder that reruns resume in
        _check_output(args, inside_folders=False)
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    """Every failure is one line on stderr (exit 2 for bad input); ``--debug`` shows the traceback."""
    return guarded_main(_run, argv, "python -m kosmosg_core")
