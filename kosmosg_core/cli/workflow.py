"""``workflow``: run a ComfyUI workflow JSON headless in an embedded ComfyUI (kosmosg_core.comfy_host)."""

from __future__ import annotations

import argparse

from .arguments import int_range


def add_parser(sub) -> None:
    flow = sub.add_parser("workflow", help="run a ComfyUI workflow JSON headless in an embedded ComfyUI")
    flow.add_argument("file", help="workflow JSON (UI or API format), e.g. workflows/kosmos-g_multi-entity.json")
    flow.add_argument("--offline-smoke", action="store_true", help="run on tiny random weights made on the spot")
    flow.add_argument("--comfyui",
                      help="ComfyUI folder (default: COMFYUI_PATH, the ComfyUI around this pack, or the test host)")
    flow.add_argument("--base-dir", help="ComfyUI base folder (models/, input/, output/) to use instead of the default")
    flow.add_argument("--steps", type=int_range(1, 10_000), help="override the sampler steps")
    flow.add_argument("--size", help="override the latent size, e.g. 512x512")
    flow.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..comfy_host import run_workflow

    return run_workflow(args)
