"""``gill-index``: GILL retrieval index, built from a folder or imported from the official file."""

from __future__ import annotations

import argparse
import json
import sys

from ..dtypes import DTYPE_NAMES
from ..safe_files import atomic_write_with
from .arguments import device
from .common import load_gill


def add_parser(sub) -> None:
    index = sub.add_parser("gill-index", help="GILL retrieval index: build from a folder, or import the official file")
    index.add_argument("action", choices=["build", "import"])
    index.add_argument("source", help="build: image folder; import: cc3m_embeddings_urls.npy (a pickle)")
    index.add_argument("--out", required=True, help="index .safetensors")
    for flag in ("--checkpoint", "--llm", "--vision"):
        index.add_argument(flag, help="build: GILL release / OPT / CLIP folders")
    index.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    index.add_argument("--device", type=device, default="cpu")
    index.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..gill.retrieval import RetrievalIndex, build_index

    if args.action == "import":
        index = RetrievalIndex.import_official(args.source)
    else:
        from tqdm import tqdm

        gill = load_gill(args)
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
