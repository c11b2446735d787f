"""ComfyUI's HTTP server under load: 50 varied Kosmos-G prompts queued at once on tiny models.

All complete, each image equals the one the in-process executor makes from the same prompt, a
malformed prompt in the middle is refused with a validation error and disturbs nothing, and the
server's memory stays flat once warm (measured and printed).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from support.comfy_graphs import read_images, sd_graph

PROMPTS = [("<i> wearing <i>", ("dog.png", "hat.png")), ("a photo of <i> on the beach", ("cat.png",)),
           ("a red car in the snow", ()), ("<image2> next to <image1>", ("story_1.png", "story_2.png")),
           ("<i> in the style of <i>", ("pose.png", "dog.png"))]
WARM_UP = 10
MEMORY_GROWTH_LIMIT = 150 * 2**20


def varied_prompt(index: int) -> dict:
    text, images = PROMPTS[index % len(PROMPTS)]
    graph = sd_graph(seed=1000 + index, prompt=text, images=images, lora=0.5 if index % 3 == 0 else None,
                     controlnet=0.8 if index % 4 == 1 else None)
    graph["save"]["inputs"]["filename_prefix"] = f"load_{index:02d}"
    return graph


def malformed_prompt() -> dict:
    graph = varied_prompt(0)
    graph["sampler"]["inputs"]["steps"] = "many"
    del graph["sampler"]["inputs"]["latent_image"]
    return graph


def as_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png))).astype(np.float64)


@pytest.fixture(scope="module")
def served(comfy_server):
    """Queue everything first, then collect: the queue really holds 50 prompts at once."""
    ids, rss = [], {}
    for index in range(WARM_UP):
        status, body = comfy_server.queue(varied_prompt(index))
        assert status == 200, body
        ids.append(body["prompt_id"])
    histories = [comfy_server.wait(prompt_id) for prompt_id in ids]
    rss["warm"] = comfy_server.rss_bytes()
    refused = None
    for index in range(WARM_UP, 50):
        if index == 30:
            refused = comfy_server.queue(malformed_prompt())
        status, body = comfy_server.queue(varied_prompt(index))
        assert status == 200, body
        ids.append(body["prompt_id"])
    histories += [comfy_server.wait(prompt_id, timeout=900) for prompt_id in ids[WARM_UP:]]
    rss["end"] = comfy_server.rss_bytes()
    return {"histories": histories, "rss": rss, "refused": refused}


def test_all_fifty_complete_with_an_image(served):
    assert len(served["histories"]) == 50
    for history in served["histories"]:
        assert history["status"]["status_str"] == "success", history["status"]
        assert sum(len(o.get("images", [])) for o in history["outputs"].values()) == 1


def test_malformed_prompt_gets_a_validation_error(served):
    status, body = served["refused"]
    assert status == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"]["sampler"]["errors"]
    assert {e["type"] for e in errors} >= {"required_input_missing"}


def test_outputs_match_the_in_process_executor(served, comfy, comfy_server):
    for index in (0, 1, 3, 4, 27, 49):  # each prompt form, LoRA and ControlNet, early and late in the queue
        result = comfy.run(varied_prompt(index))
        assert result.success, result.error
        expected = read_images(comfy, result)[0]
        got = as_array(comfy_server.images(served["histories"][index])[0])
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1.0, index


def test_memory_stays_flat(served):
    warm, end = served["rss"]["warm"], served["rss"]["end"]
    print(f"server RSS after {WARM_UP} prompts {warm / 2**20:.0f} MiB, after 50 {end / 2**20:.0f} MiB "
          f"({(end - warm) / 2**20:+.0f} MiB)")
    assert end - warm < MEMORY_GROWTH_LIMIT
