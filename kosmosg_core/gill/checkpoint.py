"""Reading the released GILL files: ``pretrained_ckpt.pth.tar``, ``model_args.json``,
``decision_model.pth.tar``, and checking the OPT and CLIP folders they go with.

All pickles go through the restricted unpickler; sizes come from tensor shapes (the mapper's 4
heads are the one fixed number, see ``modeling.MAPPER_HEADS``).
"""

from __future__ import annotations

import json
import os

import torch

from ..errors import CheckpointError
from ..safe_files import read_text
from ..weights.keys import count_layers, wrong_family
from ..weights.safe_pickle import restricted_torch_load
from .modeling import DecisionModel, GILLHeadsConfig

CHECKPOINT_FILE = "pretrained_ckpt.pth.tar"
ARGS_FILE = "model_args.json"
DECISION_FILE = "decision_model.pth.tar"
MAPPER = "gen_text_hidden_fcs.0."
IMG_ROWS = "input_embeddings.weight"


def _state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):  # GILL's own layout, or another project's (to name it below)
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} holds no state dict; "
                              f"expected torch.save({{'state_dict': ...}}) as GILL releases it.")
    return obj


def _strip(key: str) -> str:
    for prefix in ("module.", "model."):
        key = key.removeprefix(prefix)
    return key


def _json_object(path: str, what: str) -> dict:
    """A small JSON object file, with one-line errors for a FIFO, non-UTF-8 text, bad JSON or a non-object."""
    text = read_text(path, what, CheckpointError, max_bytes=16 << 20)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{what} {path} is not valid JSON ({str(exc)[:120]}); download it again.") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path} holds a JSON {type(value).__name__}, not an object; download it again.")
    return value


def read_model_args(directory: str) -> dict:
    path = os.path.join(directory, ARGS_FILE)
    if not os.path.lexists(path):
        raise CheckpointError(f"{ARGS_FILE} not found in {directory}; it comes with pretrained_ckpt.pth.tar "
                              "in the GILL release (checkpoints/gill_opt/).")
    return _json_object(path, ARGS_FILE)


def read_heads_state(directory: str) -> dict[str, torch.Tensor]:
    """The 137 trainable tensors, keys without the ``model.`` prefix; checks it is really GILL."""
    path = os.path.join(directory, CHECKPOINT_FILE) if os.path.isdir(directory) else directory
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{CHECKPOINT_FILE} not found in {directory}. GILL needs the folder of its release "
            f"(checkpoints/gill_opt/: {CHECKPOINT_FILE}, {ARGS_FILE}, {DECISION_FILE})."
        )
    raw = _state_dict(restricted_torch_load(path), path)
    state = {_strip(k): v for k, v in raw.items()}
    if MAPPER + "fc.weight" not in state:
        family = wrong_family(list(raw)) or (
            "it is a Kosmos-G checkpoint; load it with the Kosmos-G loader"
            if any(k.startswith("gpt_model.") for k in raw)
            else f"its weights are named {', '.join(sorted({k.split('.')[0] for k in raw})[:6])}.*"
        )
        raise CheckpointError(f"{path} is not a GILL checkpoint: {family}. Expected GILL's {CHECKPOINT_FILE}.")
    if IMG_ROWS not in state:
        raise CheckpointError(
            f"{path} lacks model.{IMG_ROWS}, the [IMG] token rows GILL adds to the LLM; the file is incomplete."
        )
    return state


def heads_config(state: dict[str, torch.Tensor], args: dict, source: str = "the GILL checkpoint") -> GILLHeadsConfig:
    try:
        return _heads_config(state, args)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except KeyError as exc:
        raise CheckpointError(f"{source} lacks {exc.args[0]}, which every GILL checkpoint has; the file is "
                              "incomplete or not GILL's pretrained_ckpt.pth.tar.") from None
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{source}: a weight or a model_args.json value has an unexpected shape or type "
                              f"({str(exc)[:160]}); the files are damaged or do not belong together.") from None


def _heads_config(state: dict[str, torch.Tensor], args: dict) -> GILLHeadsConfig:
    mapper_dim, llm_dim = state[MAPPER + "fc.weight"].shape
    visual_out, vision_dim = state["visual_embeddings.weight"].shape
    if min(mapper_dim, llm_dim, visual_out, vision_dim) <= 0:
        raise CheckpointError("a GILL weight has a zero-sized dimension")
    num_tokens = args.get("num_tokens", state[IMG_ROWS].shape[0])
    if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens <= 0:
        raise CheckpointError(f"model_args.json gives num_tokens={str(num_tokens)[:40]!r}; expected a positive integer")
    if state[IMG_ROWS].shape != (num_tokens, llm_dim):
        raise CheckpointError(
            f"the checkpoint's [IMG] rows are {tuple(state[IMG_ROWS].shape)} but model_args.json says "
            f"num_tokens={num_tokens} with an LLM width of {llm_dim}: the files do not belong together."
        )
    return GILLHeadsConfig(
        llm_dim=llm_dim,
        vision_dim=vision_dim,
        n_visual_tokens=visual_out // llm_dim,
        ret_emb_dim=state["visual_fc.weight"].shape[0],
        mapper_dim=mapper_dim,
        mapper_ffn=state[MAPPER + "tfm.encoder.layers.0.linear1.weight"].shape[0],
        mapper_encoder_layers=count_layers(state, MAPPER + "tfm.encoder.layers."),
        mapper_decoder_layers=count_layers(state, MAPPER + "tfm.decoder.layers."),
        num_clip_tokens=state[MAPPER + "query_embs"].shape[1],
        gen_emb_dim=state[MAPPER + "model.weight"].shape[0],
        num_img_tokens=num_tokens,
    )


def read_decision_model(directory: str, llm_dim: int) -> tuple[DecisionModel | None, str]:
    """(model, note). ``note`` says which release it is, or why there is none."""
    path = os.path.join(directory, DECISION_FILE)
    if not os.path.isfile(path):
        return None, f"no {DECISION_FILE} in {directory}: generate-vs-retrieve decisions are unavailable"
    state = _state_dict(restricted_torch_load(path), path)
    weight = state.get("1.weight")
    if weight is None or weight.ndim != 2 or weight.shape[0] != 2:
        raise CheckpointError(f"{path} is not GILL's decision model (expected '1.weight' of shape (2, {llm_dim})).")
    model = DecisionModel(weight.shape[1])
    try:
        model.load_state_dict({f"layers.{k}": v for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not GILL's decision model: "
                              f"its weights do not fit ({str(exc).splitlines()[0][:160]}).") from None
    if weight.shape[1] == llm_dim:
        return model.eval(), "current"
    if weight.shape[1] == llm_dim + 1:
        return model.eval(), "legacy"
    raise CheckpointError(
        f"{path} reads {weight.shape[1]} features but this GILL's LLM is {llm_dim} wide: the decision model "
        "belongs to another GILL."
    )


# transformers' defaults, which saved configs may omit
OPT_DEFAULTS = {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
                "max_position_embeddings": 2048, "num_attention_heads": 12}
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072, "image_size": 224,
                        "patch_size": 32, "num_attention_heads": 12}


def _sizes(config: dict, defaults: dict[str, int], path: str) -> dict[str, int]:
    """The config's size fields as positive whole numbers (a hostile config may hold anything)."""
    sizes = {}
    for name, default in defaults.items():
        value = config.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 40:
            raise CheckpointError(f"{path}: {name} is {str(value)[:40]!r}, not a positive whole number; the "
                                  "config.json is damaged or not the model's own. Download the folder again.")
        sizes[name] = value
    return sizes


def _weight_bytes(directory: str) -> int:
    """Bytes in the folder's weight files (any format): every parameter takes at least one of them."""
    total = 0
    for entry in os.scandir(directory):
        if entry.name.endswith((".safetensors", ".bin", ".pt", ".pth")) and entry.is_file():
            total += entry.stat().st_size
    return total


def _check_declared_size(directory: str, config_path: str, parameters: int) -> None:
    """A config that declares more parameters than the weight files can hold would make transformers
    allocate them all (randomly initialised) before anything else fails: refuse it first."""
    stored = _weight_bytes(directory)
    if parameters > stored + (16 << 20):
        raise CheckpointError(
            f"{config_path} declares a model of {parameters:,} parameters, but the weight files in {directory} "
            f"hold only {stored:,} bytes: the config does not belong to these weights. Download the folder again."
        )


def check_llm_folder(directory: str, llm_dim: int) -> dict:
    config = _hf_config(directory, "LLM", "an OPT model folder such as facebook/opt-6.7b")
    path = os.path.join(directory, "config.json")
    sizes = _sizes(config, OPT_DEFAULTS, path)
    embed = config.get("word_embed_proj_dim") or sizes["hidden_size"]
    if not isinstance(embed, int) or embed <= 0 or sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise CheckpointError(f"{path}: word_embed_proj_dim / num_attention_heads do not fit hidden_size; the "
                              "config.json is damaged. Download the folder again.")
    width, layers, ffn = sizes["hidden_size"], sizes["num_hidden_layers"], sizes["ffn_dim"]
    _check_declared_size(directory, path, sizes["vocab_size"] * embed + sizes["max_position_embeddings"] * width
                         + layers * (4 * width * width + 2 * width * ffn))
    if config.get("model_type") != "opt":
        raise CheckpointError(
            f"{directory} holds a {config.get('model_type')!r} model; GILL needs OPT (facebook/opt-6.7b layout)."
        )
    width = config.get("word_embed_proj_dim") or config.get("hidden_size")
    if width != llm_dim:
        raise CheckpointError(
            f"the LLM in {directory} is {width} wide but the GILL checkpoint was trained on a {llm_dim}-wide OPT "
            f"({'facebook/opt-6.7b' if llm_dim == 4096 else 'another size'}); use the matching OPT folder."
        )
    return config


def check_vision_folder(directory: str, vision_dim: int) -> dict:
    config = _hf_config(directory, "vision", "a CLIP folder such as openai/clip-vit-large-patch14")
    vision = config.get("vision_config", config) if config.get("model_type") == "clip" else config
    if config.get("model_type") not in ("clip", "clip_vision_model"):
        raise CheckpointError(f"{directory} holds a {config.get('model_type')!r} model; "
                              "GILL needs a CLIP vision model.")
    path = os.path.join(directory, "config.json")
    if not isinstance(vision, dict):
        raise CheckpointError(f"{path}: vision_config is not an object; download the folder again.")
    sizes = _sizes(vision, CLIP_VISION_DEFAULTS, path)
    width, patches = sizes["hidden_size"], (sizes["image_size"] // sizes["patch_size"]) ** 2 + 1
    if sizes["patch_size"] > sizes["image_size"] or width % sizes["num_attention_heads"]:
        raise CheckpointError(f"{path}: patch_size / num_attention_heads do not fit the image and width; the "
                              "config.json is damaged. Download the folder again.")
    _check_declared_size(directory, path, patches * width + 3 * sizes["patch_size"] ** 2 * width
                         + sizes["num_hidden_layers"] * (4 * width * width + 2 * width * sizes["intermediate_size"]))
    if vision.get("hidden_size") != vision_dim:
        raise CheckpointError(
            f"the CLIP in {directory} is {vision.get('hidden_size')} wide but the GILL checkpoint expects "
            f"{vision_dim} (openai/clip-vit-large-patch14 for the release)."
        )
    return vision


def _hf_config(directory: str, what: str, expected: str) -> dict:
    path = os.path.join(directory or "", "config.json")
    if not directory or not os.path.lexists(path):
        raise CheckpointError(f"no {what} model at {directory!r} (looked for {path}); expected {expected}.")
    return _json_object(path, f"{what} config")
