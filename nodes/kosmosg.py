"""Kosmos-G nodes: load the model, encode interleaved prompts, mix with CLIP text.

Node IDs are stable (workflows store them); change behaviour, never the IDs.
"""

from __future__ import annotations

import folder_paths
import torch

from kosmosg_core.errors import CheckpointError, ImageError
from kosmosg_core.loading import load_kosmosg
from kosmosg_core.quantization import QUANTIZATIONS
from .comfy_runtime import (
    KosmosGRuntime,
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

MODEL_FOLDER = "kosmos_g"
CATEGORY = "conditioning/kosmos-g"
WHAT_TO_DOWNLOAD = (
    "Kosmos-G needs checkpoint_final.pt from the official release (or a file converted from it with "
    "`python -m kosmosg_core convert`), with sentencepiece.bpe.model and dict.txt beside it or in a "
    "tokenizer/ subfolder."
)

register_model_folder(MODEL_FOLDER)


class KosmosGLoader:
    DESCRIPTION = "Loads the Kosmos-G multimodal LLM and AlignerNet (official .pt or converted .safetensors)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("KOSMOSG",)
    RETURN_NAMES = ("kosmos_g",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (folder_paths.get_filename_list(MODEL_FOLDER), {
                    "tooltip": "checkpoint_final.pt from the Kosmos-G release, or a converted .safetensors, in models/kosmos_g/."}),
                "dtype": (["auto", "fp16", "bf16", "fp32"], {
                    "default": "auto", "tooltip": "auto: fp32 on CPU, ComfyUI's text-encoder precision (fp16) on GPU."}),
                "device": (["auto", "gpu", "cpu"], {
                    "default": "auto", "tooltip": "auto: where ComfyUI runs text encoders."}),
            },
            "optional": {
                "quantization": (list(QUANTIZATIONS), {
                    "default": "none",
                    "tooltip": "int8: linear weights stored as int8 (torchao), about half the memory of fp16; "
                               "conditioning cosine similarity to fp32 >= 0.9998 on the reference fixture."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint):
        try:
            check_model_name(checkpoint, "checkpoint", MODEL_FOLDER)
        except CheckpointError as exc:
            return str(exc)
        if folder_paths.get_full_path(MODEL_FOLDER, checkpoint) is None:
            return missing_file_message(MODEL_FOLDER, checkpoint, WHAT_TO_DOWNLOAD)
        return True

    def load(self, checkpoint: str, dtype: str, device: str, quantization: str = "none"):
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
        return (KosmosGRuntime(encoder, load_device, offload_device),)


class KosmosGEncode:
    DESCRIPTION = (
        "Interleaved text and images -> SD 1.5 conditioning. Write <i> where each image goes (in order: "
        "image_1's batch, image_2, ..., then more_images) or <image1>, <image2>, ... to name images by number. "
        "The negative is Kosmos-G's own null embedding unless negative text is given."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "kosmos_g": ("KOSMOSG",),
                "prompt": ("STRING", {"multiline": True, "default": "<i> wearing <i>",
                                      "tooltip": "Text with <i> (or <image1>, <image2>, ...) where the images go."}),
                "negative": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "Optional text; empty uses Kosmos-G's null embedding."}),
            },
            "optional": image_inputs(),
        }

    def encode(self, kosmos_g: KosmosGRuntime, prompt: str, negative: str, more_images=None, **sockets):
        return kosmos_g.encode(prompt, collect_images(sockets, more_images), negative)


class KosmosGImageList:
    DESCRIPTION = "Collects images of any size for KosmosG Encode's more_images input; chain as many as needed."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("KOSMOSG_IMAGES",)
    RETURN_NAMES = ("images",)
    FUNCTION = "collect"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": ("IMAGE",)},
            "optional": {"previous": ("KOSMOSG_IMAGES", {"tooltip": "Images collected so far (they come first)."})},
        }

    def collect(self, image: torch.Tensor, previous=None):
        if previous is not None and not isinstance(previous, (list, tuple)):
            raise ImageError(f"previous got {type(previous).__name__}; connect another KosmosG Image List.")
        return (tuple(previous or ()) + tuple(frames(image)),)


class KosmosGConcatCLIPText:
    DESCRIPTION = (
        "Appends a CLIP text encoding (e.g. a LoRA's trigger words through a LoRA'd CLIP) after the Kosmos-G "
        "tokens, as ConditioningConcat does; the U-Net attends to both. pooled_output comes from CLIP."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "concat"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "clip": ("CLIP",),
                "text": ("STRING", {"multiline": True, "default": "", "tooltip": "CLIP text, e.g. trigger words."}),
            }
        }

    def concat(self, conditioning: list, clip, text: str):
        encoded = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        clip_tokens, clip_extra = encoded[0][0], encoded[0][1]
        result = []
        for tokens, extra in conditioning:
            merged = dict(extra)
            if "pooled_output" in clip_extra:
                merged["pooled_output"] = clip_extra["pooled_output"]
            result.append([torch.cat((tokens, clip_tokens.to(tokens)), dim=1), merged])
        return (result,)


NODE_CLASS_MAPPINGS = {
    "KosmosGLoader": KosmosGLoader,
    "KosmosGEncode": KosmosGEncode,
    "KosmosGImageList": KosmosGImageList,
    "KosmosGConcatCLIPText": KosmosGConcatCLIPText,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "KosmosGLoader": "KosmosG Loader",
    "KosmosGEncode": "KosmosG Encode",
    "KosmosGImageList": "KosmosG Image List",
    "KosmosGConcatCLIPText": "KosmosG + CLIP Text",
}
