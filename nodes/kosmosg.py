"""Kosmos-G nodes (ComfyUI V3 schema): load the model, encode interleaved prompts, mix with CLIP text.

Node IDs, input names and order, socket types and output order are stable (workflows store them;
tests/data/node_interface_v1.json holds them); change behaviour, never the interface.
"""

from __future__ import annotations

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from kosmosg_core.errors import CheckpointError, ImageError
from kosmosg_core.kosmosg.loading import load_kosmosg
from kosmosg_core.model_files import KOSMOSG_FOLDER, KOSMOSG_WHAT_TO_DOWNLOAD
from kosmosg_core.weights.quantization import QUANTIZATIONS

from .comfy_runtime import (
    KosmosGImages,
    KosmosGRuntime,
    KosmosGSocket,
    check_model_name,
    collect_images,
    frames,
    image_inputs,
    missing_file_message,
    model_folders,
    progress_callback,
    register_model_folder,
    resolve_devices,
    resolve_dtype,
)

MODEL_FOLDER = KOSMOSG_FOLDER
CATEGORY = "conditioning/kosmos-g"
WHAT_TO_DOWNLOAD = KOSMOSG_WHAT_TO_DOWNLOAD

register_model_folder(MODEL_FOLDER)


DTYPES = ["auto", "fp16", "bf16", "fp32"]  # the order shown; the names are kosmosg_core.dtypes'
DEVICES = ["auto", "gpu", "cpu"]


class KosmosGLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KosmosGLoader",
            display_name="KosmosG Loader",
            category=CATEGORY,
            description="Loads the Kosmos-G multimodal LLM and AlignerNet (official .pt or converted .safetensors).",
            inputs=[
                io.Combo.Input("checkpoint", options=folder_paths.get_filename_list(MODEL_FOLDER), tooltip=(
                    "checkpoint_final.pt from the Kosmos-G release, or a converted .safetensors, "
                    "in models/kosmos_g/.")),
                io.Combo.Input("dtype", options=DTYPES, default="auto", tooltip=(
                    "auto: fp32 on CPU, ComfyUI's text-encoder precision (fp16) on GPU.")),
                io.Combo.Input("device", options=DEVICES, default="auto",
                               tooltip="auto: where ComfyUI runs text encoders."),
                io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none", optional=True, tooltip=(
                    "int8: linear weights stored as int8 (torchao), about half the memory of fp16; "
                    "conditioning cosine similarity to fp32 >= 0.9998 on the reference fixture.")),
            ],
            outputs=[KosmosGSocket.Output("kosmos_g", display_name="kosmos_g", tooltip=(
                "The loaded Kosmos-G; ComfyUI moves it to the GPU while it encodes and offloads it afterwards."))],
        )

    @classmethod
    def validate_inputs(cls, checkpoint):
        try:
            check_model_name(checkpoint, "checkpoint", MODEL_FOLDER)
        except CheckpointError as exc:
            return str(exc)
        if folder_paths.get_full_path(MODEL_FOLDER, checkpoint) is None:
            return missing_file_message(MODEL_FOLDER, checkpoint, WHAT_TO_DOWNLOAD)
        return True

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, device: str, quantization: str = "none"):
        path = folder_paths.get_full_path(MODEL_FOLDER, check_model_name(checkpoint, "checkpoint", MODEL_FOLDER))
        if path is None:
            raise CheckpointError(missing_file_message(MODEL_FOLDER, checkpoint, WHAT_TO_DOWNLOAD))
        load_device, offload_device = resolve_devices(device)
        progress = progress_callback()
        encoder = load_kosmosg(
            path,
            dtype=resolve_dtype(dtype, load_device),
            device=offload_device,
            progress=progress,
            allow_stage2=False,
            tokenizer_dirs=model_folders(MODEL_FOLDER),
            quantization=quantization,
        )
        return io.NodeOutput(KosmosGRuntime(encoder, load_device, offload_device))


class KosmosGEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KosmosGEncode",
            display_name="KosmosG Encode",
            category=CATEGORY,
            description=(
                "Interleaved text and images -> SD 1.5 conditioning. Write <i> where each image goes (in order: "
                "image_1's batch, image_2, ..., then more_images) or <image1>, <image2>, ... to name images by number. "
                "The negative is Kosmos-G's own null embedding unless negative text is given."
            ),
            inputs=[
                KosmosGSocket.Input("kosmos_g", tooltip="The model from KosmosG Loader."),
                io.String.Input("prompt", multiline=True, default="<i> wearing <i>",
                                tooltip="Text with <i> (or <image1>, <image2>, ...) where the images go."),
                io.String.Input("negative", multiline=True, default="",
                                tooltip="Optional text; empty uses Kosmos-G's null embedding."),
                *image_inputs(),
            ],
            outputs=[
                io.Conditioning.Output("positive", display_name="positive", tooltip=(
                    "77 Kosmos-G tokens in place of CLIP text: connect to a sampler's positive (or ControlNet).")),
                io.Conditioning.Output("negative_out", display_name="negative", tooltip=(
                    "Kosmos-G's null embedding, or the negative text encoded: connect to the sampler's negative.")),
            ],
        )

    @classmethod
    def execute(cls, kosmos_g: KosmosGRuntime, prompt: str, negative: str, more_images=None, **sockets):
        return io.NodeOutput(*kosmos_g.encode(prompt, collect_images(sockets, more_images), negative))


class KosmosGImageList(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KosmosGImageList",
            display_name="KosmosG Image List",
            category=CATEGORY,
            description="Collects images of any size for KosmosG Encode's more_images input; chain as many as needed.",
            inputs=[
                io.Image.Input("image", tooltip="Image(s) to add; a batch adds each of its images, in batch order."),
                KosmosGImages.Input("previous", optional=True, tooltip="Images collected so far (they come first)."),
            ],
            outputs=[KosmosGImages.Output("images", display_name="images", tooltip=(
                "previous, then this image: for more_images of an encode node, or the next KosmosG Image List."))],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, previous=None):
        if previous is not None and not isinstance(previous, (list, tuple)):
            raise ImageError(f"previous got {type(previous).__name__}; connect another KosmosG Image List.")
        return io.NodeOutput(tuple(previous or ()) + tuple(frames(image)))


class KosmosGConcatCLIPText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KosmosGConcatCLIPText",
            display_name="KosmosG + CLIP Text",
            category=CATEGORY,
            description=(
                "Appends a CLIP text encoding (e.g. a LoRA's trigger words through a LoRA'd CLIP) after the Kosmos-G "
                "tokens, as ConditioningConcat does; the U-Net attends to both. pooled_output comes from CLIP."
            ),
            inputs=[
                io.Conditioning.Input("conditioning",
                                      tooltip="Kosmos-G conditioning (e.g. KosmosG Encode's positive)."),
                io.Clip.Input("clip", tooltip="The SD 1.5 checkpoint's CLIP "
                                              "(through a LoRA loader to use its trigger words)."),
                io.String.Input("text", multiline=True, default="", tooltip="CLIP text, e.g. trigger words."),
            ],
            # no name in V1 either: the socket is labelled with its type
            outputs=[io.Conditioning.Output("CONDITIONING", display_name="CONDITIONING", tooltip=(
                "The Kosmos-G tokens followed by the CLIP tokens, with CLIP's pooled_output."))],
        )

    @classmethod
    def execute(cls, conditioning: list, clip, text: str):
        encoded = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        clip_tokens, clip_extra = encoded[0][0], encoded[0][1]
        result = []
        for tokens, extra in conditioning:
            merged = dict(extra)
            if "pooled_output" in clip_extra:
                merged["pooled_output"] = clip_extra["pooled_output"]
            result.append([torch.cat((tokens, clip_tokens.to(tokens)), dim=1), merged])
        return io.NodeOutput(result)


NODES = [KosmosGLoader, KosmosGEncode, KosmosGImageList, KosmosGConcatCLIPText]
