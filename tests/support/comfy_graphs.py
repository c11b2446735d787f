"""Small API-format graphs for behaviour tests (the example workflows are tested as they are)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kosmosg_core.comfy_host.tiny_models import CONTROLNET, KOSMOSG_CHECKPOINT, LORA, SD15_CHECKPOINT


def node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


def kosmos_nodes(prompt: str = "<i> wearing <i>", images=("dog.png", "hat.png"), negative: str = "") -> dict:
    graph = {
        "ks": node("KosmosGLoader", checkpoint=KOSMOSG_CHECKPOINT, dtype="auto", device="auto"),
        "enc": node("KosmosGEncode", kosmos_g=["ks", 0], prompt=prompt, negative=negative),
    }
    for index, name in enumerate(images, start=1):
        graph[f"img{index}"] = node("LoadImage", image=name)
        graph["enc"]["inputs"][f"image_{index}"] = [f"img{index}", 0]
    return graph


def sd_graph(positive=("enc", 0), negative=("enc", 1), seed: int = 1, batch: int = 1, lora: float | None = None,
             controlnet: float | None = None, prompt: str = "<i> wearing <i>", images=("dog.png", "hat.png")) -> dict:
    graph = kosmos_nodes(prompt, images)
    graph["ckpt"] = node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    model = ["ckpt", 0]
    if lora is not None:
        graph["lora"] = node("LoraLoaderModelOnly", model=model, lora_name=LORA, strength_model=lora)
        model = ["lora", 0]
    positive, negative = list(positive), list(negative)
    if controlnet is not None:
        graph["cnl"] = node("ControlNetLoader", control_net_name=CONTROLNET)
        graph["hint"] = node("LoadImage", image="pose.png")
        graph["cna"] = node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=["cnl", 0],
                            image=["hint", 0], strength=controlnet, start_percent=0.0, end_percent=1.0)
        positive, negative = ["cna", 0], ["cna", 1]
    graph["latent"] = node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    graph["sampler"] = node("KSampler", model=model, seed=seed, steps=2, cfg=5.0, sampler_name="euler",
                            scheduler="normal", positive=positive, negative=negative, latent_image=["latent", 0],
                            denoise=1.0)
    graph["decode"] = node("VAEDecode", samples=["sampler", 0], vae=["ckpt", 2])
    graph["save"] = node("SaveImage", images=["decode", 0], filename_prefix="test")
    return graph


INPUT_IMAGES = ("dog.png", "hat.png", "pose.png", "cat.png", "story_1.png", "story_2.png")


def write_input_images(input_dir: str) -> None:
    """The images the workflows and graphs name: random pixels, a different size each."""
    for seed, name in enumerate(INPUT_IMAGES):
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 256, (72 + 8 * seed, 88, 3), dtype=np.uint8)).save(f"{input_dir}/{name}")


def read_images(host, result) -> list[np.ndarray]:
    paths = result.image_paths(host.output_dir)
    assert paths, f"no image written: {result.error}"
    return [np.asarray(Image.open(p)).astype(np.float64) for p in paths]
