"""Which model file goes into which folder, said once: the ``download`` subcommand's sources, the
workflow runner's "this file is missing, get it from ..." lines, the ComfyUI nodes' folder names and
messages, and the README's table all read it from here. Also where the pack itself lies. Imports
nothing from the rest of the pack."""

from __future__ import annotations

import os
from dataclasses import dataclass

# the pack's folder (the ComfyUI custom node: __init__.py, nodes/, kosmosg_core/, ...)
PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KB, MB, GB = 1 << 10, 1 << 20, 1 << 30
HUB = "https://huggingface.co"

# ComfyUI model folders (under models/) the nodes register and the download fills
KOSMOSG_FOLDER = "kosmos_g"
GILL_FOLDER = "gill"
SD15_FOLDER = "checkpoints"

KOSMOSG_WHAT_TO_DOWNLOAD = (
    "Kosmos-G needs checkpoint_final.pt from the official release (or a file converted from it with "
    "`python -m kosmosg_core convert`), with sentencepiece.bpe.model and dict.txt beside it or in a "
    "tokenizer/ subfolder."
)

KOSMOSG_CHECKPOINT = (
    "https://conversationhub.blob.core.windows.net/beit-share-public/kosmosg/checkpoint_final.pt"
    "?sv=2023-01-03&st=2024-04-10T13%3A11%3A44Z&se=2050-04-11T13%3A11%3A00Z&sr=c&sp=r"
    "&sig=4cXJIjVRZHIBWqHjPgDn%2F01oczpDWXipmPCUk3Z8vbQ%3D"
)
KOSMOSG_DATA = "https://raw.githubusercontent.com/xichenpan/Kosmos-G/f5c0489320bb885f0454d69fa06e0b37aa88db88/data/"
# GitHub, not the Hugging Face copy (jykoh/gill): its decision_model.pth.tar is the old
# Linear(4097, 2) classifier, which the current GILL code cannot load.
GILL_RELEASE = "https://raw.githubusercontent.com/kohjingyu/gill/4600b71a3193267c14aac8b600d958611c4c20be/checkpoints/gill_opt/"
GILL_LICENCE = "see kohjingyu/gill"


@dataclass(frozen=True)
class UrlFile:
    """A file at a fixed URL; only the server's own GET response headers can verify it.

    ``max_bytes`` bounds the body where the server states no size; ``states`` lists what the
    source always publishes ("size", "md5"), so an answer without it is not that source."""

    url: str
    dest: str  # relative to ComfyUI's models/
    licence: str
    what: str
    max_bytes: int
    states: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubRepo:
    """Files of a Hugging Face model repo; the hub's tree API lists their sizes and LFS sha256."""

    repo: str
    dest: str  # folder relative to ComfyUI's models/
    licence: str
    what: str
    max_bytes: int  # per file: a listing that states more is refused
    only: tuple[str, ...] = ()  # just these files; default: see wanted_files()


MANIFEST: dict[str, tuple[UrlFile | HubRepo, ...]] = {
    "kosmos-g": (
        UrlFile(KOSMOSG_CHECKPOINT, KOSMOSG_FOLDER + "/checkpoint_final.pt", "MIT",
                "Kosmos-G final checkpoint (Azure blob, about 3.8-5.7 GB)", 16 * GB, states=("size", "md5")),
        UrlFile(KOSMOSG_DATA + "sentencepiece.bpe.model", KOSMOSG_FOLDER + "/sentencepiece.bpe.model", "MIT",
                "Kosmos-G tokenizer (SentencePiece model)", 16 * MB),
        UrlFile(KOSMOSG_DATA + "dict.txt", KOSMOSG_FOLDER + "/dict.txt", "MIT",
                "Kosmos-G tokenizer (fairseq dictionary)",
                16 * MB),
    ),
    "gill": (
        UrlFile(GILL_RELEASE + "model_args.json", GILL_FOLDER + "/gill_opt/model_args.json", GILL_LICENCE,
                "GILL model arguments", 1 * MB),
        UrlFile(GILL_RELEASE + "pretrained_ckpt.pth.tar", GILL_FOLDER + "/gill_opt/pretrained_ckpt.pth.tar",
                GILL_LICENCE,
                "GILL trained layers (about 100 MB)", 1 * GB),
        UrlFile(GILL_RELEASE + "decision_model.pth.tar", GILL_FOLDER + "/gill_opt/decision_model.pth.tar", GILL_LICENCE,
                "GILL retrieve-or-generate classifier, Linear(4096, 2)", 16 * MB),
        HubRepo("facebook/opt-6.7b", GILL_FOLDER + "/opt-6.7b",
                "OPT-175B licence agreement (non-commercial research only)",
                "the frozen OPT-6.7B language model (about 13 GB)", 16 * GB),
        HubRepo("openai/clip-vit-large-patch14", GILL_FOLDER + "/clip-vit-large-patch14", "MIT",
                "CLIP ViT-L/14 (the vision tower)", 4 * GB),
    ),
    "sd15": (
        HubRepo("stable-diffusion-v1-5/stable-diffusion-v1-5", SD15_FOLDER, "CreativeML OpenRAIL-M",
                "Stable Diffusion 1.5 (re-upload of the deleted runwayml repo, about 4 GB)", 8 * GB,
                only=("v1-5-pruned-emaonly.safetensors",)),
    ),
}


# loader node -> [(input naming a file or folder, ComfyUI model folder, where users get it)]
MODEL_INPUTS = {
    "KosmosGLoader": [("checkpoint", KOSMOSG_FOLDER,
                       "the Kosmos-G release (checkpoint_final.pt), "
                       "with sentencepiece.bpe.model and dict.txt beside it")],
    "CheckpointLoaderSimple": [("ckpt_name", SD15_FOLDER,
                               "an SD 1.5 checkpoint (stable-diffusion-v1-5/stable-diffusion-v1-5)")],
    "ControlNetLoader": [("control_net_name", "controlnet", "an SD 1.5 ControlNet (lllyasviel/ControlNet-v1-1)")],
    "LoraLoaderModelOnly": [("lora_name", "loras", "any SD 1.5 LoRA (or change the name in the workflow)")],
    "GILLLoader": [("release", GILL_FOLDER, "the GILL release folder checkpoints/gill_opt (pretrained_ckpt.pth.tar, "
                                       "model_args.json, decision_model.pth.tar)"),
                   ("llm", GILL_FOLDER, "the facebook/opt-6.7b model folder"),
                   ("vision", GILL_FOLDER, "the openai/clip-vit-large-patch14 model folder")],
}


def default_models_dir() -> str:
    """The models/ of the ComfyUI this pack sits in, else the test host's comfy_home/models,
    which is where ``python -m kosmosg_core workflow`` looks on the built-in host."""
    parent = os.path.dirname(PACK_DIR)
    if os.path.basename(parent) == "custom_nodes":
        return os.path.join(os.path.dirname(parent), "models")
    return os.path.join(PACK_DIR, "comfy_home", "models")
