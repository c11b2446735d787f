"""Hostile workflows against ``python -m kosmosg_core workflow`` and the nodes (issue 14).

Every CLI case runs in its own capped process (``hostile_harness``) beside canaries: a victim
file outside the base folder, and a picture the user already has in ``input/``. Refused inputs
must end as one ``error:`` line (exit 2) and change nothing; the smoke run may write only into
the base folder it owns, and never over a file. Cases that fail before ComfyUI boots are cheap
and many; the few that boot ComfyUI (conversion needs the node classes) or run the smoke graph
are listed apart.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import REPO
from support.hostile_harness import Canary, assert_clear_error, run_cli

MULTI_ENTITY = REPO / "workflows" / "kosmos-g_multi-entity.json"
BOOTED = ("output", "temp", "user", "custom_nodes", "models")  # what ComfyHost makes in its base folder
MARKER = ".kosmosg-offline-smoke"


def png_bytes(seed: int) -> bytes:
    import io

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Site:
    """tmp/victim.png (a user's photo outside the base), tmp/base/input/dog.png (a picture the user
    already has where the workflow reads it), tmp/base/.kosmosg-offline-smoke (an earlier smoke run's
    folder, so a smoke run may use it), the workflow file in tmp/wf/."""

    def __init__(self, tmp: Path, owned: bool = True):
        self.tmp, self.base = tmp, tmp / "base"
        self.victim = tmp / "victim.png"
        self.victim.write_bytes(png_bytes(1))
        (self.base / "input").mkdir(parents=True)
        self.keep = self.base / "input" / "dog.png"
        self.keep.write_bytes(png_bytes(2))
        if owned:
            (self.base / MARKER).write_text("earlier smoke run\n")
        (tmp / "wf").mkdir()
        self.canary: Canary | None = None

    def workflow(self, content, name: str = "workflow.json") -> Path:
        path = self.tmp / "wf" / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_text(json.dumps(content), encoding="utf-8")
        return path

    def watch(self) -> None:
        self.canary = Canary(self.tmp)

    def run(self, path, *extra, base: Path | None = None):
        self.canary = self.canary or Canary(self.tmp)
        return run_cli(["workflow", str(path), "--base-dir", str(base or self.base), *extra], cwd=REPO)

    def check(self, booted: bool = False, allowed=()) -> None:
        allow = [self.base / name for name in BOOTED] if booted else []
        self.canary.check(tuple(allow) + tuple(allowed))
        assert self.victim.read_bytes() == png_bytes(1) and self.keep.read_bytes() == png_bytes(2)


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def api(**nodes) -> dict:
    return {key: {"class_type": kind, "inputs": inputs} for key, (kind, inputs) in nodes.items()}


def load_and_save(image) -> dict:
    return api(load=("LoadImage", {"image": image}),
               save=("SaveImage", {"images": ["load", 0], "filename_prefix": "x"}))


def ui(nodes: list, links: list | None = None) -> dict:
    return {"last_node_id": 9, "last_link_id": 9, "nodes": nodes, "links": [] if links is None else links,
            "version": 0.4}


def ui_node(node_id, kind="SaveImage", **extra) -> dict:
    return {"id": node_id, "type": kind, "mode": 0, "inputs": [], "outputs": [], "widgets_values": [], **extra}


def multi_entity(**edits) -> dict:
    """The example workflow with its LoadImage / KosmosGLoader widgets edited."""
    workflow = json.loads(MULTI_ENTITY.read_text())
    loads = [n for n in workflow["nodes"] if n["type"] == "LoadImage"]
    if "image" in edits:
        loads[0]["widgets_values"][0] = edits["image"]
    if "loader_values" in edits:
        next(n for n in workflow["nodes"] if n["type"] == "KosmosGLoader")["widgets_values"] = edits["loader_values"]
    if "node_type" in edits:
        loads[0]["type"] = edits["node_type"]
    return workflow


# --- cheap: refused before ComfyUI boots ------------------------------------------------------------

FILE_CASES = {
    "not-json": (b"{nodes: [", r"not JSON .*line 1"),
    "empty-file": (b"", r"not JSON"),
    "json-list": ([1, 2], r"JSON list, not a workflow object"),
    "json-string": ("\"workflow\"", r"JSON str"),
    "json-null": ("null", r"JSON NoneType|not a workflow"),
    "not-utf8": (b'{"nodes": "\xff\xfe"}', r"not UTF-8"),
    "deep-nesting": ("[" * 200_000 + "]" * 200_000, r"nests JSON deeper"),
    "nan-constant": ('{"1": {"class_type": "SaveImage", "inputs": {"x": NaN}}}', r"NaN"),
    "huge-integer": ('{"1": {"class_type": "SaveImage", "inputs": {"x": ' + "9" * 5000 + "}}}",
                     r"value JSON cannot hold"),
    "empty-object": ({}, r"no nodes"),
    "prompt-request-body": ({"prompt": load_and_save("dog.png"), "client_id": "x"}, r"/prompt request body"),
    "api-node-without-class-type": (api(a=("SaveImage", {})) | {"b": {"inputs": {}}}, r"'b' is not a node"),
    "api-node-is-a-list": ({"1": [1, 2]}, r"'1' is not a node"),
    "api-inputs-not-object": ({"1": {"class_type": "SaveImage", "inputs": [1]}}, r"'inputs' is list"),
    "api-dangling-link": (api(save=("SaveImage", {"images": ["ghost", 0]})), r"'ghost'.*not in the workflow"),
    "api-link-wrong-shape": (api(save=("SaveImage", {"images": [1, 2, 3]})), r"a list is a link"),
    "api-link-negative-slot": (api(a=("LoadImage", {"image": "dog.png"}), save=("SaveImage", {"images": ["a", -1]})),
                               r"a list is a link"),
    "ui-nodes-not-list": (ui({"1": {}}), r"'nodes' is dict"),
    "ui-links-not-list": ({"nodes": [], "links": "x"}, r"'links' is str"),
    "ui-node-not-object": (ui([7]), r"node #0 is int"),
    "ui-node-without-type": (ui([{"id": 1, "mode": 0}]), r"node 1 has no node type"),
    "ui-node-without-id": (ui([{"type": "SaveImage"}]), r"node #0 has no 'id'"),
    "ui-node-id-list": (ui([ui_node([1])]), r"node id \[1\]"),
    "ui-node-id-bool": (ui([ui_node(True)]), r"node id True"),
    "ui-duplicate-node-ids": (ui([ui_node(1), ui_node(1)]), r"node id 1 is used by two nodes"),
    "ui-mode-string": (ui([ui_node(1, mode="never")]), r"mode 'never'"),
    "ui-inputs-not-list": (ui([ui_node(1, inputs={"images": 1})]), r"'inputs' is dict"),
    "ui-input-without-name": (ui([ui_node(1, inputs=[{"link": 1}])]), r"without a name"),
    "ui-input-link-string": (ui([ui_node(1, inputs=[{"name": "images", "link": "1"}])]), r"link '1'"),
    "ui-widgets-values-string": (ui([ui_node(1, widgets_values="ComfyUI")]), r"'widgets_values' is str"),
    "ui-widgets-values-number": (ui([ui_node(1, widgets_values=5)]), r"'widgets_values' is int"),
    "ui-dangling-link": (ui([ui_node(1, inputs=[{"name": "images", "type": "IMAGE", "link": 4}])]),
                         r"uses link 4, which is not in 'links'"),
    "ui-link-to-missing-node": (ui([ui_node(1, inputs=[{"name": "images", "type": "IMAGE", "link": 4}])],
                                   [[4, 99, 0, 1, 0, "IMAGE"]]), r"linked to node 99"),
    "ui-link-too-short": (ui([ui_node(1)], [[4, 2]]), r"link #0 is \[4, 2\]"),
    "ui-link-id-string": (ui([ui_node(1)], [["4", 1, 0, 1, 0, "IMAGE"]]), r"link #0 has id '4'"),
    "ui-link-slot-negative": (ui([ui_node(1)], [[4, 1, -3, 1, 0, "IMAGE"]]), r"output slot -3"),
    "ui-link-object-without-origin": (ui([ui_node(1)], [{"id": 4}]), r"output slot None"),
    "ui-duplicate-link-ids": (ui([ui_node(1)], [[4, 1, 0, 1, 0, "IMAGE"], [4, 1, 0, 1, 0, "IMAGE"]]), r"appears twice"),
}


# Every case in-process (milliseconds); a spread of them through the CLI too (each a fresh process).
CLI_FILE_CASES = ["not-json", "json-list", "not-utf8", "deep-nesting", "huge-integer", "empty-object",
                  "api-node-without-class-type", "api-dangling-link", "ui-node-without-type", "ui-node-id-list",
                  "ui-widgets-values-string", "ui-dangling-link", "ui-link-id-string", "ui-link-to-missing-node"]


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_workflow_file_is_a_workflow_error(tmp_path, case):
    from kosmosg_core.comfy_host import load_workflow
    from kosmosg_core.errors import KosmosGError

    site = Site(tmp_path)
    content, pattern = FILE_CASES[case]
    path = site.workflow(content)
    with pytest.raises(KosmosGError, match=pattern) as caught:
        load_workflow(str(path), CLASSES)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", CLI_FILE_CASES)
def test_bad_workflow_file_is_one_line(site, case):
    content, pattern = FILE_CASES[case]
    path = site.workflow(content)
    outcome = site.run(path)
    line = assert_clear_error(outcome, pattern)
    assert str(path) in line, line
    site.check()


IMAGE_NAMES = {"dotdot": "../../victim.png", "absolute": "VICTIM", "backslash-dotdot": "..\\..\\victim.png",
               "inner-dotdot": "sub/../../victim.png", "nul": "dog.png\x00.txt", "empty": "", "blank": "  ",
               "lone-surrogate": "\ud800.png", "number": 7, "dict": {"a": 1},
               "windows-drive": "C:\\Users\\me\\photo.png", "unc": "\\\\server\\share\\x.png"}
IMAGE_NAME_PATTERN = r"node load \(LoadImage\) image .*(absolute|'\.\.'|NUL|empty|not valid text|not a file name)"


@pytest.mark.parametrize("case", list(IMAGE_NAMES))
def test_image_name_outside_input_is_refused_in_process(tmp_path, case):
    from kosmosg_core.comfy_host import check_file_names
    from kosmosg_core.comfy_host.workflow import WorkflowError

    name = IMAGE_NAMES[case] if case != "absolute" else str(tmp_path / "victim.png")
    with pytest.raises(WorkflowError, match=IMAGE_NAME_PATTERN):
        check_file_names("wf.json", load_and_save(name))


@pytest.mark.parametrize("smoke", [False, True], ids=["run", "smoke"])
@pytest.mark.parametrize("case", ["dotdot", "absolute", "nul", "lone-surrogate"])
def test_image_name_outside_input_is_refused(site, case, smoke):
    name = str(site.victim) if case == "absolute" else IMAGE_NAMES[case]
    content = json.dumps(load_and_save(name)) if case != "lone-surrogate" else \
        json.dumps(load_and_save("PLACEHOLDER")).replace("PLACEHOLDER", "\\ud800.png")
    path = site.workflow(content)
    outcome = site.run(path, *(["--offline-smoke"] if smoke else []))
    assert_clear_error(outcome, IMAGE_NAME_PATTERN)
    site.check()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "gill_opt/../.."])
def test_model_name_outside_model_folder_is_refused(site, name):
    kind, key = ("GILLLoader", "release") if name.startswith("gill") else ("KosmosGLoader", "checkpoint")
    path = site.workflow(api(ks=(kind, {key: name}), save=("SaveImage", {"images": ["ks", 0]})))
    assert_clear_error(site.run(path), r"model files inside the (kosmos_g|gill) model folder")
    site.check()


@pytest.mark.parametrize("value,smoke,pattern", [
    ("abc", False, r"--size 'abc' is not WIDTHxHEIGHT"),
    ("512x", False, r"not WIDTHxHEIGHT"),
    ("512x512x3", False, r"not WIDTHxHEIGHT"),
    ("-64x64", False, r"not WIDTHxHEIGHT"),
    ("0x0", False, r"out of range"),
    ("513x512", False, r"multiples of 8"),
    ("99999x99999", False, r"out of range"),
    ("4096x4096", True, r"to 1024 in a smoke run"),
])
def test_bad_size_in_process(value, smoke, pattern):
    from kosmosg_core.comfy_host import parse_size
    from kosmosg_core.errors import KosmosGError

    with pytest.raises(KosmosGError, match=pattern):
        parse_size(value, smoke)
    assert parse_size("512X768", False) == (512, 768)


@pytest.mark.parametrize("args,pattern", [
    (["--size", "abc"], r"--size 'abc' is not WIDTHxHEIGHT"),
    (["--size", "0x0"], r"out of range"),
    (["--size", "4096x4096", "--offline-smoke"], r"to 1024 in a smoke run"),
    (["--steps", "-1"], r"--steps:? -1 is out(side| of range)"),
], ids=["letters", "zero", "smoke-huge", "steps-negative"])
def test_bad_overrides_are_one_line(site, args, pattern):
    assert_clear_error(site.run(MULTI_ENTITY, *args), pattern)
    site.check()


def test_workflow_file_that_is_a_fifo_is_refused_without_waiting(site):
    fifo = site.tmp / "wf" / "pipe.json"
    os.mkfifo(fifo)
    assert_clear_error(site.run(fifo), r"named pipe \(FIFO\)")
    site.check()


def test_huge_workflow_file_is_refused_before_reading(site):
    path = site.tmp / "wf" / "huge.json"
    with open(path, "wb") as handle:  # sparse: no disk, but 33 MiB to a reader
        handle.truncate((32 << 20) + 1)
    assert_clear_error(site.run(path), r"more than the 33,554,432")
    site.check()


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_workflow_path_that_is_not_a_file(site, kind):
    path = site.tmp / "wf" / "nothing.json"
    if kind == "folder":
        path.mkdir()
    assert_clear_error(site.run(path), r"not found|is a folder")
    site.check()


def test_smoke_run_refuses_a_users_folder(tmp_path):
    site = Site(tmp_path, owned=False)  # a ComfyUI base with the user's pictures, not made by a smoke run
    assert_clear_error(site.run(MULTI_ENTITY, "--offline-smoke"), r"not empty and was not made by --offline-smoke")
    site.check()


def test_base_dir_that_is_a_file_is_refused(site):
    assert_clear_error(site.run(MULTI_ENTITY, "--offline-smoke", base=site.victim), r"is not a folder")
    assert_clear_error(site.run(MULTI_ENTITY, base=site.victim), r"is not a folder")
    site.check()


# --- the converter in-process (no ComfyUI: a stand-in node set) ----------------------------------------

class Loader:
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt": (["a.pt", "b.pt"],), "strength": ("FLOAT", {"default": 1.0})}}


class Sampler:
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0}), "steps": ("INT", {"default": 20})}}


CLASSES = {"Loader": Loader, "Sampler": Sampler}


def good_ui() -> dict:
    return ui([ui_node(1, "Loader", widgets_values=["b.pt", 0.5], outputs=[{"name": "MODEL", "links": [1]}]),
               ui_node(2, "Sampler", inputs=[{"name": "model", "type": "MODEL", "link": 1}],
                       widgets_values=[5, "fixed", 3])],
              [[1, 1, 0, 2, 0, "MODEL"]])


def test_converter_stand_in_converts_the_good_workflow():
    from kosmosg_core.comfy_host.workflow import ui_to_api

    prompt = ui_to_api(good_ui(), CLASSES)
    assert prompt["2"]["inputs"] == {"model": ["1", 0], "seed": 5, "steps": 3}
    assert prompt["1"]["inputs"] == {"ckpt": "b.pt", "strength": 0.5}


def _edit(path: str, value):
    workflow = good_ui()
    target = workflow
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return workflow


CONVERTER_CASES = {
    "widget-overflow": (_edit("nodes.0.widgets_values", ["b.pt", 0.5, "extra"]),
                        r"3 widget values but Loader here takes 2"),
    "widget-overflow-seed": (_edit("nodes.1.widgets_values", [5, "fixed", 3, 4, 5]), r"5 widget values"),
    "widget-list-smuggles-a-link": (_edit("nodes.0.widgets_values", [["2", 0], 0.5]), r"holds the list"),
    "unknown-type": (_edit("nodes.0.type", "EvilNode"), r"'EvilNode', which is not installed"),
    "bypassed": (_edit("nodes.0.mode", 4), r"bypassed"),
    "linked-to-muted": (_edit("nodes.0.mode", 2), r"muted or a note"),
    "dangling": (_edit("links", []), r"uses link 1, which is not in 'links'"),
    "reroute-without-input": (_edit("nodes.0.type", "Reroute"), r"reroute node 1 has no input"),
    "reroute-loop": (_edit("nodes.0", ui_node(1, "Reroute", inputs=[{"name": "", "link": 1}])), r"reroute loop"),
    "not-a-dict": ([good_ui()], r"not a UI-format workflow"),
    "subgraph": (_edit("definitions", {"subgraphs": [{"id": "Loader-uuid"}]}) | {"nodes": [
        ui_node(1, "Loader-uuid")]}, r"subgraph"),
}


@pytest.mark.parametrize("case", list(CONVERTER_CASES))
def test_converter_refuses_with_a_workflow_error(case):
    from kosmosg_core.comfy_host.workflow import WorkflowError, ui_to_api
    from kosmosg_core.errors import KosmosGError

    workflow, pattern = CONVERTER_CASES[case]
    with pytest.raises(WorkflowError, match=pattern) as caught:
        ui_to_api(workflow, CLASSES)
    assert isinstance(caught.value, KosmosGError) and "\n" not in str(caught.value)


def test_converter_checks_output_slots():
    from kosmosg_core.comfy_host.workflow import WorkflowError, check_output_slots

    prompt = api(a=("Loader", {"ckpt": "a.pt"}), b=("Sampler", {"model": ["a", 3]}))
    with pytest.raises(WorkflowError, match=r"uses output 3 of node a \('Loader'\), which has 1 output"):
        check_output_slots(prompt, CLASSES)


# --- booting ComfyUI (the UI format needs its node classes) ---------------------------------------

def test_ui_workflow_whose_widget_values_overflow_is_refused(site):
    values = ["checkpoint_final.pt", "auto", "auto", "none", "surplus"]
    path = site.workflow(multi_entity(loader_values=values))
    assert_clear_error(site.run(path), r"5 widget values but KosmosGLoader here takes 4")
    site.check(booted=True)


@pytest.mark.parametrize("name", ["../../victim.png", "VICTIM"], ids=["dotdot", "absolute"])
def test_smoke_ui_workflow_naming_a_photo_outside_input_writes_nothing(site, name):
    path = site.workflow(multi_entity(image=str(site.victim) if name == "VICTIM" else name))
    assert_clear_error(site.run(path, "--offline-smoke"), r"LoadImage\) image .*(absolute|'\.\.')")
    site.check(booted=True)


def test_smoke_image_that_is_a_link_out_of_input_is_refused(site):
    link = site.base / "input" / "hat.png"
    link.symlink_to(site.victim)
    path = site.workflow(MULTI_ENTITY.read_bytes())
    assert_clear_error(site.run(path, "--offline-smoke"), r"image 'hat.png' leads outside .*through a link")
    site.check(booted=True)


def test_image_that_is_a_fifo_in_input_is_refused_without_waiting(site):
    os.mkfifo(site.base / "input" / "pipe.png")
    path = site.workflow(load_and_save("pipe.png"))
    assert_clear_error(site.run(path), r"image 'pipe.png' is not a regular file")
    site.check(booted=True)


def test_unknown_node_type_in_ui_workflow(site):
    path = site.workflow(multi_entity(node_type="EvilLoadImage"))
    assert_clear_error(site.run(path), r"'EvilLoadImage', which is not installed")
    site.check(booted=True)


def test_api_link_to_an_output_the_node_does_not_have(site):
    path = site.workflow(api(load=("LoadImage", {"image": "dog.png"}), save=("SaveImage", {"images": ["load", 9]})))
    assert_clear_error(site.run(path), r"uses output 9 of node load \('LoadImage'\), which has 2 output")
    site.check(booted=True)


def test_save_prefix_outside_output_is_one_line_without_traceback(site):
    graph = load_and_save("dog.png")
    graph["save"]["inputs"]["filename_prefix"] = "../../victim"
    path = site.workflow(graph)
    assert_clear_error(site.run(path), r"workflow .* failed: SaveImage \(node save\)")
    site.check(booted=True)
    assert not list(site.tmp.glob("victim_*")) and not list((site.base / "output").rglob("*.png"))


# --- the smoke run itself ------------------------------------------------------------------------

def test_smoke_run_keeps_the_users_files_and_writes_only_into_its_base(site):
    """dog.png (the user's) is used as it is; hat.png is made; a model file already there is kept."""
    lora = site.base / "models" / "loras" / "sd15_style_lora.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"the user's LoRA")
    path = site.workflow(MULTI_ENTITY.read_bytes())
    site.watch()
    outcome = site.run(path, "--offline-smoke")
    assert outcome.returncode == 0 and "Traceback" not in outcome.stderr, outcome.describe()
    assert lora.read_bytes() == b"the user's LoRA"
    site.check(booted=True, allowed=(site.base / "input" / "hat.png",))
    assert (site.base / "input" / "hat.png").is_file()
    leftovers = [p for p in site.base.rglob("*") if p.name.startswith(".") and p.name != MARKER]
    assert not leftovers, leftovers  # no temporary files or staging folders left behind


# --- the nodes, in the in-process ComfyUI -------------------------------------------------------------

def _pack_module(name: str):
    from kosmosg_core.comfy_host.host import PACK_DIR

    wanted = os.path.join(PACK_DIR, "nodes", name)
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == wanted)


def test_library_is_imported_once(comfy):
    import kosmosg_core.errors

    for module_file in ("kosmosg.py", "gill.py", "comfy_runtime.py"):
        module = _pack_module(module_file)
        assert module.CheckpointError is kosmosg_core.errors.CheckpointError
    runtime = _pack_module("comfy_runtime.py")
    assert runtime.ImageError is kosmosg_core.errors.ImageError
    copies = [name for name in sys.modules if name.endswith(".kosmosg_core") or ".kosmosg_core." in name]
    assert not copies, copies
    error = comfy.node_classes()["KosmosGLoader"].execute.__globals__["CheckpointError"]
    assert issubclass(error, kosmosg_core.errors.KosmosGError)


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "a\x00.pt", 5])
def test_kosmosg_loader_refuses_names_outside_its_folder(comfy, name):
    from kosmosg_core.errors import CheckpointError

    loader = comfy.node_classes()["KosmosGLoader"]
    message = loader.validate_inputs(checkpoint=name)
    assert isinstance(message, str) and "kosmos_g model folder" in message and "\n" not in message
    with pytest.raises(CheckpointError, match="kosmos_g model folder"):
        loader.execute(name, "auto", "auto")


@pytest.mark.parametrize("name", ["..", "../..", "gill_opt/../../..", "/"])
def test_gill_loader_refuses_folders_outside_models_gill(comfy, name):
    loader = comfy.node_classes()["GILLLoader"]
    message = loader.validate_inputs(release=name, llm="opt-6.7b", vision="clip-vit-large-patch14")
    assert isinstance(message, str) and "gill model folder" in message and "\n" not in message


def test_gill_loader_refuses_a_link_pointing_out(comfy, tmp_path):
    from kosmosg_core.errors import CheckpointError

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    gill_root = Path(comfy.folder_paths.get_folder_paths("gill")[0])
    link = gill_root / "escape"
    link.symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(CheckpointError, match="not in the gill model folder"):
            _pack_module("gill.py").resolve_subfolder("escape", "release")
    finally:
        link.unlink()


@pytest.mark.parametrize("value,pattern", [
    ("not a tensor", r"image_1 got str, not an IMAGE"),
    ("shape-2-channels", r"shape \(1, 8, 8, 2\)"),
    ("shape-5d", r"shape \(1, 1, 8, 8, 3\)"),
    ("empty", r"shape \(0, 8, 8, 3\)"),
    ("nan", r"NaN or infinite"),
    ("int64", r"torch.int64 tensor"),
])
def test_bad_image_tensors_are_named(comfy, value, pattern):
    import torch

    from kosmosg_core.errors import ImageError

    tensors = {"shape-2-channels": torch.zeros(1, 8, 8, 2), "shape-5d": torch.zeros(1, 1, 8, 8, 3),
               "empty": torch.zeros(0, 8, 8, 3), "nan": torch.full((1, 8, 8, 3), float("nan")),
               "int64": torch.zeros(1, 8, 8, 3, dtype=torch.int64)}
    runtime = _pack_module("comfy_runtime.py")
    with pytest.raises(ImageError, match=pattern):
        runtime.collect_images({"image_1": tensors.get(value, value)})


def test_image_list_refuses_a_bad_tensor(comfy):
    import torch

    from kosmosg_core.errors import ImageError

    node = comfy.node_classes()["KosmosGImageList"]
    with pytest.raises(ImageError, match="shape"):
        node.execute(torch.zeros(2, 2))
    with pytest.raises(ImageError, match="previous got str"):
        node.execute(torch.zeros(1, 8, 8, 3), previous="x")


def test_graph_with_a_climbing_checkpoint_name_fails_validation_in_one_line(comfy):
    from support.comfy_graphs import sd_graph

    graph = sd_graph(seed=41)
    graph["ks"]["inputs"]["checkpoint"] = "../../../../etc/passwd"
    result = comfy.run(graph)
    assert not result.success and "climbs out of the folder" in result.error and "\n" not in result.error
