"""Every workflow in workflows/ runs in a real ComfyUI, as a user would drag it in."""

from __future__ import annotations

import json

import numpy as np
import pytest

from support import REPO
from support.comfy_graphs import read_images

from kosmosg_core.comfy_host import override
from kosmosg_core.comfy_host.workflow import ui_to_api

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
USER_FILE_NAMES = {  # workflows name the files as users have them
    "kosmos-g": {"checkpoint_final.pt", "v1-5-pruned-emaonly.safetensors"},
    "gill": {"gill_opt", "opt-6.7b", "clip-vit-large-patch14", "v1-5-pruned-emaonly.safetensors"},
}


def api_prompt(comfy, path, seed=None):
    """The workflow as the frontend would queue it; only steps and image size are changed."""
    prompt = override(ui_to_api(json.loads(path.read_text()), comfy.node_classes()), steps=2, size=(64, 64))
    if seed is not None:
        for node in prompt.values():
            if node["class_type"] == "KSampler":
                node["inputs"]["seed"] = seed
    return prompt


def test_there_are_workflows():
    names = {p.name for p in WORKFLOWS}
    assert {"kosmos-g_multi-entity.json", "kosmos-g_controlnet-canny.json", "kosmos-g_lora.json",
            "kosmos-g_text-to-image.json", "kosmos-g_clip-mix.json", "gill_visual-story.json",
            "gill_dialogue.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_executes(comfy, path):
    text = path.read_text()
    assert all(name in text for name in USER_FILE_NAMES[path.name.split("_")[0]])
    result = comfy.run(api_prompt(comfy, path))
    assert result.success, result.error
    for image in read_images(comfy, result):
        assert image.shape == (64, 64, 3) and np.isfinite(image).all() and image.std() > 1.0


def test_requeue_with_new_seed_reuses_the_encoder(comfy):
    path = REPO / "workflows" / "kosmos-g_multi-entity.json"
    first = comfy.run(api_prompt(comfy, path, seed=100))
    second = comfy.run(api_prompt(comfy, path, seed=101))
    assert first.success and second.success, (first.error, second.error)
    prompt = api_prompt(comfy, path)
    encoder = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGEncode")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "KosmosGLoader")
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "KSampler")
    cached = second.message("execution_cached")["nodes"]
    assert encoder in cached and loader in cached and sampler not in cached
    a, b = read_images(comfy, first)[0], read_images(comfy, second)[0]
    assert np.abs(a - b).mean() > 1.0  # the seed did change the picture


def test_widget_added_after_the_workflow_was_saved_gets_its_default(comfy):
    """The example workflows predate the loader's quantization widget, as users' saved files do."""
    workflow = json.loads((REPO / "workflows" / "kosmos-g_multi-entity.json").read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "KosmosGLoader")
    assert len(loader["widgets_values"]) == 3
    prompt = ui_to_api(workflow, comfy.node_classes())
    assert prompt[str(loader["id"])]["inputs"]["quantization"] == "none"
