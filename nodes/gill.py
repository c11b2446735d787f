"""GILL nodes (ComfyUI V3 schema): load, encode to CONDITIONING, write text (with image slots), retrieve images.

GILL's own negative is SD's CLIP encoding of "" (a CLIPTextEncode with empty text), so the
encoder gives only the positive side. Node IDs and the rest of the interface are stable
(tests/data/node_interface_v1.json).
"""

from __future__ import annotations

import json
import os

import comfy.model_management as mm
import folder_paths
import numpy as np
import torch
from comfy_api.v0_0_2 import io

from kosmosg_core.errors import CheckpointError
from kosmosg_core.gill import load_gill
from kosmosg_core.gill.checkpoint import CHECKPOINT_FILE
from kosmosg_core.gill.retrieval import RetrievalIndex
from kosmosg_core.hooks import per_layer
from kosmosg_core.image_processing import load_image_file
from kosmosg_core.model_files import GILL_FOLDER

from .comfy_runtime import (
    as_conditioning,
    check_model_name,
    collect_images,
    image_inputs,
    inside_folder,
    managed,
    model_folders,
    progress_callback,
    register_model_folder,
    resolve_devices,
    resolve_dtype,
)

MODEL_FOLDER = GILL_FOLDER
CATEGORY = "conditioning/gill"
GILLSocket = io.Custom("GILL")
register_model_folder(MODEL_FOLDER)


def _config_type(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            return json.load(handle).get("model_type")
    except (OSError, ValueError):
        return None


def gill_subfolders(kind: str) -> list[str]:
    """Folders under models/gill (two levels deep) that hold a release, an OPT or a CLIP model."""
    found = set()
    for root in model_folders(MODEL_FOLDER):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root):
            depth = os.path.relpath(dirpath, root).count(os.sep)
            if depth >= 2:
                dirnames[:] = []
            if dirpath == root:
                continue
            name = os.path.relpath(dirpath, root)
            if kind == "release" and os.path.isfile(os.path.join(dirpath, CHECKPOINT_FILE)):
                found.add(name)
            elif kind == "llm" and _config_type(dirpath) == "opt":
                found.add(name)
            elif kind == "vision" and _config_type(dirpath) in ("clip", "clip_vision_model"):
                found.add(name)
    return sorted(found)


def resolve_subfolder(name: str, what: str) -> str:
    check_model_name(name, f"{what} folder", MODEL_FOLDER)
    for root in model_folders(MODEL_FOLDER):
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate) and inside_folder(candidate, root):
            return candidate
    raise CheckpointError(
        f"{what} folder {name!r} is not in the gill model folder(s): {'; '.join(model_folders(MODEL_FOLDER))}. "
        "GILL needs its release folder (pretrained_ckpt.pth.tar, model_args.json, decision_model.pth.tar), "
        "an OPT folder (facebook/opt-6.7b) and a CLIP folder (openai/clip-vit-large-patch14) there."
    )


class GILLRuntime:
    """What flows through a ``GILL`` socket: the model and the ModelPatcher ComfyUI manages."""

    def __init__(self, gill, load_device, offload_device, quantized: bool):
        self.gill = gill
        self.patcher = None if quantized else managed(gill.modules(), load_device, offload_device)

    def ready(self):
        if self.patcher is not None:
            mm.load_models_gpu([self.patcher], memory_required=256 << 20, force_full_load=True)
        return self.gill


def _decision_text(slot) -> str:
    if slot.decision is None:
        return f"unknown ({slot.decision_note})"
    p_gen, p_ret = slot.decision[0].tolist()
    return f"{slot.choice} (generate {p_gen:.3f}, retrieve {p_ret:.3f})"


def _gill_input():
    return GILLSocket.Input("gill", tooltip="The model from GILL Loader.")


def _decision_output(tooltip: str):
    return io.String.Output("decision", display_name="decision", tooltip=tooltip)


class GILLLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GILLLoader",
            display_name="GILL Loader",
            category=CATEGORY,
            description=("Loads GILL: its release folder, the OPT LLM folder and the CLIP folder, "
                         "all under models/gill."),
            inputs=[
                io.Combo.Input("release", options=gill_subfolders("release"),
                               tooltip="Folder with pretrained_ckpt.pth.tar and model_args.json."),
                io.Combo.Input("llm", options=gill_subfolders("llm"), tooltip="OPT folder (facebook/opt-6.7b)."),
                io.Combo.Input("vision", options=gill_subfolders("vision"),
                               tooltip="CLIP folder (openai/clip-vit-large-patch14)."),
                io.Combo.Input("dtype", options=["auto", "fp16", "bf16", "fp32"], default="auto",
                               tooltip="auto: fp32 on CPU, ComfyUI's text-encoder precision (fp16) on GPU."),
                io.Combo.Input("quantization", options=["none", "8bit", "4bit"], default="none",
                               tooltip="8/4-bit LLM weights through bitsandbytes (CUDA only); stays on the GPU."),
                io.Combo.Input("device", options=["auto", "gpu", "cpu"], default="auto",
                               tooltip="auto: where ComfyUI runs text encoders."),
            ],
            outputs=[GILLSocket.Output("gill", display_name="gill", tooltip=(
                "The loaded GILL; ComfyUI moves it to the GPU while it runs and offloads it afterwards "
                "(8/4-bit: stays on the GPU)."))],
        )

    @classmethod
    def validate_inputs(cls, release, llm, vision):
        try:
            for name, what in ((release, "release"), (llm, "LLM"), (vision, "vision")):
                resolve_subfolder(name, what)
        except CheckpointError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, release, llm, vision, dtype, quantization, device):
        load_device, offload_device = resolve_devices(device)
        quantized = quantization != "none"
        gill = load_gill(resolve_subfolder(release, "release"), resolve_subfolder(llm, "LLM"),
                         resolve_subfolder(vision, "vision"), dtype=resolve_dtype(dtype, load_device),
                         device=load_device if quantized else offload_device, quantization=quantization)
        return io.NodeOutput(GILLRuntime(gill, load_device, offload_device, quantized))


class GILLEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GILLEncode",
            display_name="GILL Encode",
            category=CATEGORY,
            description=(
                "Interleaved text and images -> SD 1.5 conditioning from GILL's 8 [IMG] tokens. Use a CLIPTextEncode "
                "of empty text as the negative (GILL's own unconditional side). Also says whether GILL would "
                "generate or retrieve this image."
            ),
            inputs=[
                _gill_input(),
                io.String.Input("prompt", multiline=True, default="<i> at night",
                                tooltip="Text with <i> where the images go; the image is conditioned on all of it."),
                *image_inputs(),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive", tooltip=(
                    "77 tokens from GILL's [IMG] tokens: a sampler's positive; "
                    "its negative is a CLIPTextEncode of \"\".")),
                _decision_output("generate or retrieve, with GILL's two probabilities."),
            ],
        )

    @classmethod
    def execute(cls, gill: GILLRuntime, prompt: str, more_images=None, **sockets):
        model = gill.ready()
        with per_layer(list(model.lm.model.decoder.layers), progress_callback()):
            slot, _ = model.encode(prompt, collect_images(sockets, more_images))
        return io.NodeOutput(as_conditioning(slot.cond), _decision_text(slot))


class GILLGenerateText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GILLGenerateText",
            display_name="GILL Generate Text",
            category=CATEGORY,
            description=(
                "GILL writes text after the prompt (dialogue: 'Q: ...\\nA:'; captions: '<i> A picture of'). When it "
                "writes an image, the conditioning and the generate/retrieve decision are for that image; otherwise "
                "for an image placed right after its text. Image slots show as <i> in the text."
            ),
            inputs=[
                _gill_input(),
                io.String.Input("prompt", multiline=True, default="Q: Can you show me a picture of a sunset?\nA:",
                                tooltip="Text (and <i> images) GILL continues."),
                io.Int.Input("max_new_tokens", default=32, min=1, max=512,
                             tooltip="At most this many tokens are written."),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05, tooltip="0 = greedy"),
                io.Float.Input("top_p", default=1.0, min=0.05, max=1.0, step=0.05,
                               tooltip="Nucleus sampling (used when temperature > 0); 1 = off."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Sampling seed (when temperature > 0)."),
                io.Float.Input("image_scale", default=1.3, min=1.0, max=1e5, step=0.1,
                               tooltip="Scales the [IMG0] logit (official ret_scale_factor); higher = more images."),
                io.Int.Input("min_word_tokens", default=0, min=0, max=512,
                             tooltip="No image before this many text tokens are written."),
                *image_inputs(),
            ],
            outputs=[
                io.String.Output("text", display_name="text", tooltip="What GILL wrote (image slots as <i>)."),
                io.Conditioning.Output("image_conditioning", display_name="image_conditioning", tooltip=(
                    "Conditioning for the image GILL wrote (or for one right after its text): a sampler's positive.")),
                _decision_output("generate or retrieve for that image, with GILL's two probabilities."),
            ],
        )

    @classmethod
    def execute(cls, gill: GILLRuntime, prompt, max_new_tokens, temperature, top_p, seed, image_scale,
                min_word_tokens, more_images=None, **sockets):
        model = gill.ready()
        images = collect_images(sockets, more_images)
        result = model.generate(prompt, images, max_new_tokens, temperature=temperature,
                                top_p=top_p if temperature > 0 else 1.0, min_word_tokens=min_word_tokens,
                                ret_scale=image_scale, seed=seed, callback=progress_callback())
        if result.slots:
            slot, decision = result.slots[0], _decision_text(result.slots[0])
        else:
            slot, _ = model.encode(prompt + result.text, images)
            decision = "no image written; conditioning for an image after the text: " + _decision_text(slot)
        return io.NodeOutput(result.text, as_conditioning(slot.cond), decision)


class GILLRetrieve(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="GILLRetrieve",
            display_name="GILL Retrieve Image",
            category=CATEGORY,
            description=(
                "Finds the image of a retrieval index (built with `python -m kosmosg_core gill-index build FOLDER`) "
                "that GILL finds closest to the prompt; returns it and the top matches with their scores."
            ),
            inputs=[
                _gill_input(),
                io.Combo.Input("index", options=folder_paths.get_filename_list(MODEL_FOLDER),
                               tooltip="A .safetensors retrieval index in models/gill."),
                io.String.Input("prompt", multiline=True, default="a dog running on the beach",
                                tooltip="Text (and <i> images) describing the image to find."),
                io.Int.Input("top_k", default=3, min=1, max=100, tooltip="How many matches the matches text lists."),
                *image_inputs(),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The best match that is a local file."),
                io.String.Output("matches", display_name="matches",
                                 tooltip="The top matches: score and path, one a line."),
            ],
        )

    @classmethod
    def execute(cls, gill: GILLRuntime, index, prompt, top_k, more_images=None, **sockets):
        path = folder_paths.get_full_path(MODEL_FOLDER, check_model_name(index, "retrieval index", MODEL_FOLDER))
        if path is None:
            raise CheckpointError(f"retrieval index {index!r} is not in {'; '.join(model_folders(MODEL_FOLDER))}.")
        table = RetrievalIndex.load(path)
        model = gill.ready()
        slot, _ = model.encode(prompt, collect_images(sockets, more_images))
        hits = table.search(slot.ret_emb, model.heads.logit_scale, top_k)
        local = [p for p, _ in hits if os.path.isfile(p)]
        if not local:
            raise CheckpointError(
                f"none of the top matches is a local file (e.g. {hits[0][0]}); indexes imported from the official "
                "CC3M embeddings hold URLs. Build an index from a local folder for this node."
            )
        pixels = np.asarray(load_image_file(local[0]), dtype=np.float32) / 255.0
        matches = "\n".join(f"{score:.3f}  {p}" for p, score in hits)
        return io.NodeOutput(torch.from_numpy(pixels)[None], matches)


NODES = [GILLLoader, GILLEncode, GILLGenerateText, GILLRetrieve]
