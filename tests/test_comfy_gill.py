"""GILL nodes inside the real ComfyUI, on tiny GILL files under the names users have."""

from __future__ import annotations

import os

import torch

from support.comfy_graphs import node, read_images

from kosmosg_core.comfy_host.tiny_models import GILL_LLM, GILL_RELEASE, GILL_VISION, SD15_CHECKPOINT
from kosmosg_core.gill import load_gill
from kosmosg_core.gill.retrieval import build_index


def gill_graph(head: dict, positive, seed: int = 1) -> dict:
    graph = {
        "gill": node("GILLLoader", release=GILL_RELEASE, llm=GILL_LLM, vision=GILL_VISION, dtype="auto",
                     quantization="none", device="auto"),
        "img1": node("LoadImage", image="dog.png"),
        "ckpt": node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT),
        "neg": node("CLIPTextEncode", clip=["ckpt", 1], text=""),
        "latent": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "sampler": node("KSampler", model=["ckpt", 0], seed=seed, steps=2, cfg=7.5, sampler_name="euler",
                        scheduler="normal", positive=positive, negative=["neg", 0], latent_image=["latent", 0],
                        denoise=1.0),
        "decode": node("VAEDecode", samples=["sampler", 0], vae=["ckpt", 2]),
        "save": node("SaveImage", images=["decode", 0], filename_prefix="gill"),
    }
    graph.update(head)
    return graph


def library_gill(comfy):
    models = comfy.tiny_models
    return load_gill(models["gill_release"], models["gill_llm"], models["gill_vision"])


def test_gill_encode_node_matches_the_library(comfy):
    prompt = "a man walks his dog on the beach. <i> they reach the bridge."
    head = {"enc": node("GILLEncode", gill=["gill", 0], prompt=prompt, image_1=["img1", 0]),
            "show": node("PreviewAny", source=["enc", 1])}
    result = comfy.run(gill_graph(head, ["enc", 0]))
    assert result.success, result.error
    conditioning = comfy.node_output("enc", 0)
    tokens, extra = conditioning[0]
    assert tokens.shape == (1, 77, 768) and extra["pooled_output"].shape == (1, 768)
    slot, _ = library_gill(comfy).encode(prompt, [os.path.join(comfy.folder_paths.get_input_directory(), "dog.png")])
    assert (tokens - slot.cond).abs().max().item() <= 1e-5
    decision = comfy.node_output("enc", 1)
    assert decision.startswith(slot.choice) and "generate" in decision
    assert result.outputs["show"]["text"][0] == decision


def test_gill_generate_text_gives_text_conditioning_and_decision(comfy):
    head = {"gen": node("GILLGenerateText", gill=["gill", 0], prompt="Q: show me a dog like this <i>\nA:",
                        max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0, image_scale=1e5, min_word_tokens=0,
                        image_1=["img1", 0]),
            "show": node("PreviewAny", source=["gen", 0])}
    result = comfy.run(gill_graph(head, ["gen", 1]))
    assert result.success, result.error
    text, conditioning, decision = (comfy.node_output("gen", i) for i in range(3))
    assert text.startswith("<i>")  # image_scale forces an image slot first
    assert conditioning[0][0].shape == (1, 77, 768)
    assert "generate" in decision and "retrieve" in decision and not decision.startswith("no image")
    assert read_images(comfy, result)


def test_gill_retrieve_node_returns_the_best_local_image(comfy):
    gill = library_gill(comfy)
    input_dir = comfy.folder_paths.get_input_directory()
    index = build_index(gill, input_dir)
    index.save(os.path.join(os.path.dirname(comfy.tiny_models["gill_release"]), "inputs_index.safetensors"))
    head = {"ret": node("GILLRetrieve", gill=["gill", 0], index="inputs_index.safetensors",
                        prompt="a picture like <i>", top_k=3, image_1=["img1", 0]),
            "show": node("PreviewAny", source=["ret", 1])}
    graph = gill_graph(head, ["neg", 0])
    graph["save"]["inputs"]["images"] = ["ret", 0]
    result = comfy.run(graph)
    assert result.success, result.error
    image, matches = comfy.node_output("ret", 0), comfy.node_output("ret", 1)
    slot, _ = gill.encode("a picture like <i>", [os.path.join(input_dir, "dog.png")])
    best = index.search(slot.ret_emb, gill.heads.logit_scale, 1)[0][0]
    assert matches.splitlines()[0].endswith(best) and len(matches.splitlines()) == 3
    import numpy as np
    from PIL import Image

    expected = np.asarray(Image.open(best).convert("RGB"), dtype=np.float32) / 255
    assert image.shape == (1, *expected.shape) and torch.equal(image[0], torch.from_numpy(expected))


def test_gill_model_is_managed_and_missing_folders_are_named(comfy):
    import comfy.model_management as mm

    head = {"enc": node("GILLEncode", gill=["gill", 0], prompt="<i> at night", image_1=["img1", 0])}
    assert comfy.run(gill_graph(head, ["enc", 0], seed=3)).success
    runtime = comfy.node_output("gill")
    assert runtime.patcher in mm.loaded_models()
    mm.unload_all_models()
    assert runtime.patcher not in mm.loaded_models()
    graph = gill_graph(head, ["enc", 0], seed=4)
    graph["gill"]["inputs"]["llm"] = "opt-66b"
    result = comfy.run(graph)
    assert not result.success and "LLM folder 'opt-66b' is not in the gill model folder" in result.error
    assert os.path.join(comfy.base_dir, "models", "gill") in result.error


def test_cancel_during_gill_encode_ends_as_interrupted_and_the_next_prompt_runs(comfy):
    """Cancel mid-LLM: ComfyUI's interrupt is an Exception in 0.3.75 and a BaseException in 0.33.0;
    either way it must pass through the node and the runtime untouched and end the prompt as
    interrupted (not as an error), and the next prompt must run."""
    import comfy.model_management as mm
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    calls = {"layers": 0}

    def press_cancel(module, _args):
        if isinstance(module, OPTDecoderLayer):
            calls["layers"] += 1
            mm.interrupt_current_processing(True)  # as the Cancel button does, mid-LLM

    head = {"enc": node("GILLEncode", gill=["gill", 0], prompt="<i> in the snow", image_1=["img1", 0])}
    handle = torch.nn.modules.module.register_module_forward_pre_hook(press_cancel)
    try:
        result = comfy.run(gill_graph(head, ["enc", 0], seed=21))
    finally:
        handle.remove()
    assert result.interrupted and result.message("execution_error") is None, result.messages
    assert result.message("execution_interrupted")["node_type"] == "GILLEncode"
    assert calls["layers"] == 1  # stopped before the next layer
    after = comfy.run(gill_graph(head, ["enc", 0], seed=22))
    assert after.success and not after.interrupted, after.error
