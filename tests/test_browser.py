"""Every workflow in the real ComfyUI frontend (comfyui-frontend-package 1.32.9) in headless Chromium.

A user's path: open the JSON with the frontend's own file input, see no missing node and no
invalid link, press Run, see the image. The API prompt the frontend posts must equal the one
``kosmosg_core.comfy_host.workflow.ui_to_api`` makes. Screenshots go to ``KOSMOSG_SCREENSHOT_DIR`` (the
README's pictures come from ``KOSMOSG_SCREENSHOT_DIR=docs/images``), else to a temp folder.

Chromium is Debian's ``chromium`` (``CHROMIUM_PATH`` overrides); Playwright only drives it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from support import REPO

from kosmosg_core.comfy_host import override
from kosmosg_core.comfy_host.workflow import ui_to_api

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
UI_SETTINGS = {  # first-run dialogs off, full-detail nodes in screenshots; missing-node warnings stay on
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
}
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

GRAPH_PROBLEMS = """() => {
  const problems = [];
  for (const node of app.graph.nodes) {
    if (!(node.type in LiteGraph.registered_node_types)) problems.push(`missing node type ${node.type}`);
    if (node.has_errors) problems.push(`node ${node.id} (${node.type}) has errors`);
  }
  for (const link of Object.values(app.graph.links ?? {})) {
    if (!link) continue;
    const from = app.graph.getNodeById(link.origin_id), to = app.graph.getNodeById(link.target_id);
    const output = from?.outputs?.[link.origin_slot], input = to?.inputs?.[link.target_slot];
    if (!output || !input) { problems.push(`link ${link.id} points at nothing`); continue; }
    if (!LiteGraph.isValidConnection(output.type, input.type))
      problems.push(`link ${link.id}: ${from.type}.${output.name} (${output.type}) -> `
                    + `${to.type}.${input.name} (${input.type})`);
  }
  return problems;
}"""

SMALL_AND_FAST = """() => {
  for (const node of app.graph.nodes) for (const widget of node.widgets ?? []) {
    if (node.type === 'KSampler' && widget.name === 'steps') widget.value = 2;
    if (node.type === 'EmptyLatentImage' && ['width', 'height'].includes(widget.name)) widget.value = 64;
  }
}"""

IMAGE_SHOWN = """() => app.graph.nodes.filter(n => n.type === 'SaveImage')
  .every(n => n.imgs?.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0)"""


FRONTEND_ONLY_WIDGETS = {("PreviewAny", "preview")}  # display widgets the frontend adds and serializes


def declared_only(prompt: dict, comfy) -> dict:
    """The prompt without inputs the node does not declare; only known frontend display widgets may go."""
    for node in prompt.values():
        spec = comfy.node_classes()[node["class_type"]].INPUT_TYPES()
        declared = {name for section in spec.values() if isinstance(section, dict) for name in section}
        extra = set(node["inputs"]) - declared
        assert {(node["class_type"], name) for name in extra} <= FRONTEND_ONLY_WIDGETS, extra
        for name in extra:
            del node["inputs"][name]
    return prompt


@pytest.fixture(scope="module")
def page(comfy_server):
    if not os.path.isfile(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's `chromium` or set CHROMIUM_PATH")
    status, _ = comfy_server.post("/settings", UI_SETTINGS)
    assert status == 200
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(comfy_server.url, wait_until="networkidle")
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        banner_close = page.locator("div:has(> span:text('Introducing Nodes 2.0')) button, "
                                    "div:has-text('Introducing Nodes 2.0') > button").last
        if banner_close.count():
            banner_close.click()
        yield page
        browser.close()


def screenshot_dir(tmp_path_factory) -> Path:
    folder = os.environ.get("KOSMOSG_SCREENSHOT_DIR")
    return Path(folder) if folder else tmp_path_factory.getbasetemp() / "screenshots"


def test_frontend_lists_every_pack_node(page, comfy):
    ours = [name for name, cls in comfy.node_classes().items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "").startswith("custom_nodes.")]
    missing = page.evaluate("(names) => names.filter(n => !(n in LiteGraph.registered_node_types))", ours)
    assert len(ours) >= 8 and missing == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_in_the_browser(page, comfy, comfy_server, path, tmp_path_factory):
    workflow = json.loads(path.read_text())
    page.set_input_files("#comfy-file-input", str(path))  # the frontend's own "Open" path
    page.wait_for_function("(n) => app.graph.nodes.length === n", arg=len(workflow["nodes"]))
    assert page.evaluate(GRAPH_PROBLEMS) == []
    assert page.get_by_text("missing", exact=False).filter(visible=True).count() == 0, "a missing-nodes/models warning"

    page.locator('button[aria-label="Fit View (.)"]').click()
    page.wait_for_timeout(300)
    folder = screenshot_dir(tmp_path_factory)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{path.stem}.png"))

    ours = ui_to_api(workflow, comfy.node_classes(), comfy.display_names())
    assert declared_only(page.evaluate("async () => (await app.graphToPrompt()).output"), comfy) == ours

    page.evaluate(SMALL_AND_FAST)
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as response:
        # Ctrl+Enter queues in every frontend these tests run (1.32.9 on 0.3.75, 1.49.6 on 0.33.0), while the
        # Run button's layout differs (1.49.6 splits it: a locator on aria-label="Run" can open the mode menu)
        page.locator("#graph-canvas").focus()
        page.keyboard.press("Control+Enter")
    sent = declared_only(response.value.request.post_data_json["prompt"], comfy)
    assert sent == override(ours, steps=2, size=(64, 64))
    assert response.value.status == 200, response.value.text()

    page.wait_for_function(IMAGE_SHOWN, timeout=300_000)
    history = comfy_server.wait(response.value.json()["prompt_id"])
    assert history["status"]["status_str"] == "success"
    assert page.errors == []


def test_workflows_are_offered_as_templates(comfy_server):
    """ComfyUI serves a pack's workflows/ folder in its template browser, under the folder's name."""
    listed = comfy_server.get("/workflow_templates")["kosmos-g"]
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)
