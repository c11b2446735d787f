"""``download``: fetch the released weights into ComfyUI's models/ (the work is kosmosg_core.download)."""

from __future__ import annotations

import argparse

from ..model_files import MANIFEST


def add_parser(sub) -> None:
    from ..download import MIRROR_ENV

    fetch = sub.add_parser("download", help="fetch the released weights into ComfyUI's models/ (resumable, verified)")
    fetch.add_argument("model", choices=list(MANIFEST),
                       help="kosmos-g: checkpoint + tokenizer; gill: release + OPT-6.7B + CLIP; "
                            "sd15: SD 1.5 checkpoint")
    fetch.add_argument("--dest", metavar="DIR", help="ComfyUI's models/ folder (default: the ComfyUI around "
                                                     "this pack, else comfy_home/models of the test host)")
    fetch.add_argument("--mirror", metavar="URL",
                       help=f"fetch https://HOST/PATH as MIRROR/HOST/PATH (default: ${MIRROR_ENV})")
    fetch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..download import download

    download(args.model, args.dest, args.mirror)
    return 0
