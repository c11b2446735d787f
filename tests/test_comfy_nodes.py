"""The nodes inside a real ComfyUI: conditioning format, compatibility, memory, interrupts, errors."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from support.comfy_graphs import node, read_images, sd_graph

from kosmosg_core.cli import main as cli_main
from kosmosg_core.comfy_host.host import PACK_DIR
from kosmosg_core.comfy_host.tiny_models import KOSMOSG_CHECKPOINT

PACK_NODES = ["GILLEncode", "GILLGenerateText", "GILLLoader", "GILLRetrieve",
              "KosmosGConcatCLIPText", "KosmosGEncode", "KosmosGImageList", "KosmosGLoader"]


def run_ok(comfy, graph):
    result = comfy.run(graph)
    assert result.success, result.error
    return result


def test_pack_loads_through_comfyui_custom_node_loader(comfy):
    assert comfy.pack_nodes == PACK_NODES
    assert PACK_DIR in comfy.nodes.LOADED_MODULE_DIRS.values()
    assert "kosmos_g" in comfy.folder_paths.folder_names_and_paths
    assert "checkpoint_final.pt" in comfy.folder_paths.get_filename_list("kosmos_g")


def test_conditioning_format_and_parity_with_cli(comfy, tmp_path):
    run_ok(comfy, sd_graph(seed=5))
    positive, negative = comfy.node_output("enc", 0), comfy.node_output("enc", 1)
    for conditioning in (positive, negative):
        assert isinstance(conditioning, list) and len(conditioning) == 1
        tokens, extra = conditioning[0]
        assert tokens.shape == (1, 77, 768) and tokens.dtype == torch.float32 and tokens.device.type == "cpu"
        assert extra["pooled_output"].shape == (1, 768)
    input_dir = comfy.folder_paths.get_input_directory()
    out = tmp_path / "cli.safetensors"
    assert cli_main(["encode", "--checkpoint", comfy.tiny_models["kosmos_g"], "--prompt", "<i> wearing <i>",
                     "--image", os.path.join(input_dir, "dog.png"), "--image", os.path.join(input_dir, "hat.png"),
                     "--out", str(out)]) == 0
    from safetensors.torch import load_file

    cli = load_file(out)
    assert (positive[0][0] - cli["cond"]).abs().max().item() <= 1e-5
    assert (negative[0][0] - cli["uncond"]).abs().max().item() <= 1e-5


def test_conditioning_depends_on_images_and_is_deterministic(comfy):
    graph = sd_graph(seed=6)
    graph["enc_again"] = node("KosmosGEncode", kosmos_g=["ks", 0], prompt="<i> wearing <i>", negative="",
                              image_1=["img1", 0], image_2=["img2", 0])
    graph["enc_swapped"] = node("KosmosGEncode", kosmos_g=["ks", 0], prompt="<i> wearing <i>", negative="",
                                image_1=["img2", 0], image_2=["img1", 0])
    graph["combine"] = node("ConditioningCombine", conditioning_1=["enc_again", 0], conditioning_2=["enc_swapped", 0])
    graph["sampler"]["inputs"]["negative"] = ["combine", 0]
    run_ok(comfy, graph)
    same, again, swapped = (comfy.node_output(n)[0][0] for n in ("enc", "enc_again", "enc_swapped"))
    assert torch.equal(same, again)
    assert (same - swapped).abs().max().item() > 1e-3


def test_lora_and_controlnet_change_the_image_and_strength_zero_does_not(comfy):
    base = read_images(comfy, run_ok(comfy, sd_graph(seed=7)))[0]
    for option in ("lora", "controlnet"):
        off = read_images(comfy, run_ok(comfy, sd_graph(seed=7, **{option: 0.0})))[0]
        on = read_images(comfy, run_ok(comfy, sd_graph(seed=7, **{option: 1.0})))[0]
        assert np.array_equal(base, off), option
        assert np.abs(base - on).mean() > 1.0, option


def test_core_conditioning_nodes_ksampler_advanced_and_batch(comfy):
    graph = sd_graph(seed=8, lora=0.5, controlnet=0.7)
    graph["clip_text"] = node("CLIPTextEncode", clip=["ckpt", 1], text="a photo, detailed")
    graph["combine"] = node("ConditioningCombine", conditioning_1=["enc", 0], conditioning_2=["clip_text", 0])
    graph["average"] = node("ConditioningAverage", conditioning_to=["enc", 0], conditioning_from=["clip_text", 0],
                            conditioning_to_strength=0.7)
    graph["concat"] = node("ConditioningConcat", conditioning_to=["average", 0], conditioning_from=["combine", 0])
    graph["cna"]["inputs"]["positive"] = ["concat", 0]
    graph["latent"]["inputs"]["batch_size"] = 2
    inputs = graph["sampler"]["inputs"]
    graph["sampler"] = node("KSamplerAdvanced", model=inputs["model"], add_noise="enable", noise_seed=8, steps=2,
                            cfg=5.0,
                            sampler_name="euler", scheduler="normal", positive=inputs["positive"],
                            negative=inputs["negative"],
                            latent_image=inputs["latent_image"], start_at_step=0, end_at_step=10000,
                            return_with_leftover_noise="disable")
    images = read_images(comfy, run_ok(comfy, graph))
    assert len(images) == 2 and all(np.isfinite(i).all() and i.std() > 1 for i in images)


def test_image_batches_lists_and_clip_concat(comfy):
    graph = sd_graph(seed=9, prompt="<i> and <i> next to <i>", images=("dog.png",))
    graph["batch"] = node("ImageBatch", image1=["img1", 0], image2=["img1", 0])  # a batch of 2 counts as 2 images
    graph["enc"]["inputs"]["image_1"] = ["batch", 0]
    graph["cat"] = node("LoadImage", image="cat.png")
    graph["list"] = node("KosmosGImageList", image=["cat", 0])
    graph["enc"]["inputs"]["more_images"] = ["list", 0]
    graph["mix"] = node("KosmosGConcatCLIPText", conditioning=["enc", 0], clip=["ckpt", 1], text="watercolor")
    graph["sampler"]["inputs"]["positive"] = ["mix", 0]
    run_ok(comfy, graph)
    assert len(comfy.node_output("list")) == 1
    mixed = comfy.node_output("mix")[0]
    assert mixed[0].shape == (1, 154, 768)
    assert not torch.equal(mixed[1]["pooled_output"], torch.zeros(1, 768))  # CLIP's pooled vector


def test_model_is_managed_by_comfyui(comfy):
    import comfy.model_management as mm

    run_ok(comfy, sd_graph(seed=10))
    runtime = comfy.node_output("ks")
    assert runtime.patcher in mm.loaded_models()
    assert runtime.patcher.model_size() > 0
    mm.unload_all_models()
    mm.soft_empty_cache()
    assert runtime.patcher not in mm.loaded_models()
    if torch.cuda.is_available():  # on a GPU the weights must really have left the device
        assert all(p.device.type == "cpu" for p in runtime.encoder.model.parameters())
    run_ok(comfy, sd_graph(seed=11, prompt="<i> beside <i>"))  # a new prompt loads it back
    assert runtime.patcher in mm.loaded_models()


def test_interrupt_during_the_mllm_ends_as_interrupted(comfy):
    import comfy.model_management as mm
    from transformers.models.kosmos2.modeling_kosmos2 import Kosmos2TextBlock

    calls = {"text_layers": 0}

    def press_cancel(module, _args):
        if isinstance(module, Kosmos2TextBlock):
            calls["text_layers"] += 1
            mm.interrupt_current_processing(True)  # as the Cancel button does, mid-MLLM

    handle = torch.nn.modules.module.register_module_forward_pre_hook(press_cancel)
    try:
        result = comfy.run(sd_graph(seed=12, prompt="<i> interrupted <i>"))
    finally:
        handle.remove()
    assert result.interrupted and result.message("execution_error") is None
    assert result.message("execution_interrupted")["node_type"] == "KosmosGEncode"
    assert calls["text_layers"] == 1  # stopped before the next layer
    run_ok(comfy, sd_graph(seed=12, prompt="<i> not interrupted <i>"))


def _bad_then_good(comfy, graph, expected: str):
    result = comfy.run(graph)
    assert not result.success and expected in (result.error or ""), result.error
    run_ok(comfy, sd_graph(seed=13))  # the next prompt still runs


def test_placeholder_mismatch_is_a_node_error(comfy):
    _bad_then_good(comfy, sd_graph(seed=14, images=("dog.png",)), "2 image placeholder(s) (<i>) but 1 image(s)")


def test_missing_checkpoint_lists_the_folders(comfy):
    graph = sd_graph(seed=15)
    graph["ks"]["inputs"]["checkpoint"] = "missing.pt"
    result = comfy.run(graph)
    assert not result.success
    assert "missing.pt" in result.error and os.path.join(comfy.base_dir, "models", "kosmos_g") in result.error
    assert "checkpoint_final.pt" in result.error
    run_ok(comfy, sd_graph(seed=15))


@pytest.mark.parametrize("name,expected", [
    ("checkpoint_stage2.pt", "stage-2 Kosmos-G checkpoint"),
    ("ViT-L-14-sd.pt", "it is ViT-L-14-sd.pt"),
    ("checkpoint_stage1.pt", "stage-1 Kosmos-G checkpoint"),
])
def test_other_release_files_are_explained(comfy, name, expected):
    from kosmosg_core.kosmosg.synthetic import random_state_dict, tiny_size

    folder = os.path.dirname(comfy.tiny_models["kosmos_g"])
    if name == "ViT-L-14-sd.pt":
        state = {"visual.conv1.weight": torch.zeros(8, 3, 14, 14), "visual.ln_post.weight": torch.ones(8)}
    else:
        state = random_state_dict(tiny_size(400, 768, with_reconstruction=True))
        if name == "checkpoint_stage1.pt":
            state = {k: v for k, v in state.items() if not k.startswith("aligner.")}
    torch.save({"model": state}, os.path.join(folder, name))
    graph = sd_graph(seed=16)
    graph["ks"]["inputs"]["checkpoint"] = name
    _bad_then_good(comfy, graph, expected)
    _bad_then_good(comfy, graph, "checkpoint_final.pt")


def test_missing_tokenizer_lists_places_searched(comfy):
    folder = os.path.dirname(comfy.tiny_models["kosmos_g"])
    lonely = os.path.join(folder, "lonely.pt")
    shutil.copy(comfy.tiny_models["kosmos_g"], lonely)
    hidden = os.path.join(folder, "..", "hidden_tokenizer")
    os.makedirs(hidden, exist_ok=True)
    moved = [n for n in ("sentencepiece.bpe.model", "dict.txt")]
    for name in moved:
        shutil.move(os.path.join(folder, name), os.path.join(hidden, name))
    try:
        graph = sd_graph(seed=17)
        graph["ks"]["inputs"]["checkpoint"] = "lonely.pt"
        result = comfy.run(graph)
        assert not result.success
        assert "no Kosmos-G tokenizer found" in result.error and os.path.join(folder, "tokenizer") in result.error
    finally:
        for name in moved:
            shutil.move(os.path.join(hidden, name), os.path.join(folder, name))
    run_ok(comfy, sd_graph(seed=17))


def _pack_module(relative_file: str):
    """A module of the pack as ComfyUI imported it (its module name depends on the ComfyUI version)."""
    import sys

    wanted = os.path.join(PACK_DIR, relative_file)
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == wanted)


def test_model_folder_keeps_extra_model_paths_entries(comfy, tmp_path):
    runtime = _pack_module(os.path.join("nodes", "comfy_runtime.py"))
    folders = comfy.folder_paths.folder_names_and_paths
    folders["kosmos_g_probe"] = ([str(tmp_path)], set())  # as extra_model_paths.yaml declares it
    runtime.register_model_folder("kosmos_g_probe")
    paths, extensions = folders.pop("kosmos_g_probe")
    assert paths[0] == str(tmp_path) and paths[1].endswith(os.path.join("models", "kosmos_g_probe"))
    assert {".pt", ".safetensors"} <= extensions


def test_encode_reports_progress_per_layer(comfy):
    """The encoder moves its node's bar once per layer, up to the total. What reaches the hook is the
    host's choice: 0.3.75 passes every update, 0.33.0 throttles them (by time and percent) but always
    sends the first and the last, so only those are asserted at the hook."""
    from comfy import utils as comfy_utils
    from comfy_execution.utils import get_executing_context

    def running_node(node_id=None):  # as ComfyUI's server hook resolves the node
        context = get_executing_context()
        return node_id or (context.node_id if context else None)

    bar_updates, hook_updates = [], []
    update_absolute = comfy_utils.ProgressBar.update_absolute

    def record_update(bar, value, total=None, preview=None):
        bar_updates.append((value, bar.total if total is None else total, running_node(bar.node_id)))
        return update_absolute(bar, value, total, preview)

    def hook(value, total, preview, node_id=None):
        hook_updates.append((value, total, running_node(node_id)))

    previous = comfy_utils.PROGRESS_BAR_HOOK
    comfy_utils.set_progress_bar_global_hook(hook)
    comfy_utils.ProgressBar.update_absolute = record_update
    try:
        run_ok(comfy, sd_graph(seed=18, prompt="<i> with progress <i>"))
    finally:
        comfy_utils.ProgressBar.update_absolute = update_absolute
        comfy_utils.set_progress_bar_global_hook(previous)
    encoder_bar = [u for u in bar_updates if u[2] == "enc"]
    assert len(encoder_bar) >= 4, bar_updates
    values = [value for value, _, _ in encoder_bar]
    assert values == sorted(values) and values[-1] == encoder_bar[-1][1], encoder_bar
    encoder_hook = [u for u in hook_updates if u[2] == "enc"]
    assert encoder_hook and encoder_hook[0][0] < encoder_hook[-1][0] == encoder_hook[-1][1], hook_updates


def test_int8_loader_option_feeds_the_sampler(comfy):
    graph = sd_graph(seed=8)
    graph["ks8"] = node("KosmosGLoader", checkpoint=KOSMOSG_CHECKPOINT, dtype="auto", device="auto",
                        quantization="int8")
    graph["enc8"] = node("KosmosGEncode", kosmos_g=["ks8", 0], prompt="<i> wearing <i>", negative="",
                         image_1=["img1", 0], image_2=["img2", 0])
    graph["sampler"]["inputs"]["positive"] = ["enc8", 0]
    run_ok(comfy, graph)
    full, int8 = comfy.node_output("enc")[0][0], comfy.node_output("enc8")[0][0]
    cosine = torch.nn.functional.cosine_similarity(full.flatten(), int8.flatten(), dim=0)
    assert 0.999 <= cosine < 1.0
