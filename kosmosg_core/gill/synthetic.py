"""Random GILL files in the release layout (release folder, OPT folder, CLIP folder), any size.

For tests, the offline smoke run and the generation benchmark, where the real 6.7B weights
cannot be downloaded. The tokenizer is a byte-level BPE trained on the spot, in OPT's format.
"""

from __future__ import annotations

import json
import math
import os

import torch

from .checkpoint import ARGS_FILE, CHECKPOINT_FILE, DECISION_FILE
from .modeling import GILLHeads, GILLHeadsConfig

_CORPUS = [
    "a man walks his dog on the beach.", "they reach the old bridge at sunset.", "Q: what is in this picture?",
    "A: a cat sitting on a mat next to a red apple.", "then the dog runs into the water and the sky turns pink.",
    "a photo of a mountain covered in snow under a blue sky.", "show me a picture of a small house in the woods.",
]


def write_opt_tokenizer(folder: str, vocab_size: int = 400) -> int:
    """GPT-2 byte-level BPE with OPT's conventions (BOS = EOS = ``</s>`` = 2, pad 1); returns its size."""
    from tokenizers import ByteLevelBPETokenizer

    os.makedirs(folder, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS * 10, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                            show_progress=False)
    bpe.save_model(folder)
    special = {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as handle:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True, "add_prefix_space": False,
                   "errors": "replace", **special}, handle)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as handle:
        json.dump(special, handle)
    return bpe.get_vocab_size()


def write_opt(folder: str, hidden: int = 128, layers: int = 2, ffn: int | None = None, seed: int = 0,
              dtype=torch.float16, heads: int | None = None, device: str | torch.device = "cpu") -> str:
    """A random OPT of any size; ``device`` is where its weights are made (a GPU makes OPT-6.7B's in a
    second, where a CPU takes minutes); the folder is the same either way."""
    from transformers import OPTConfig, OPTForCausalLM

    vocab = write_opt_tokenizer(folder)
    config = OPTConfig(vocab_size=vocab + 7, hidden_size=hidden, word_embed_proj_dim=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads or max(1, hidden // 32), ffn_dim=ffn or 2 * hidden,
                       max_position_embeddings=2048, do_layer_norm_before=True, pad_token_id=1, bos_token_id=2,
                       eos_token_id=2, dropout=0.0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = OPTForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    return folder


def write_clip_vision(folder: str, hidden: int = 64, image_size: int = 56, seed: int = 0, layers: int = 2,
                      heads: int | None = None, device: str | torch.device = "cpu", dtype=torch.float32) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads or max(1, hidden // 64), image_size=image_size, patch_size=14,
                              hidden_act="quick_gelu", projection_dim=hidden)
    torch.manual_seed(seed)
    with torch.device(device):
        model = CLIPVisionModel(config).to(dtype)
    model.save_pretrained(folder)
    return folder


def heads_state(config: GILLHeadsConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official key names (``model.`` prefix), bf16, [IMG] rows as the pruned release stores them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        heads = GILLHeads(config)
    state = {}
    for key, value in heads.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith("bias"):
            tensor = torch.randn(shape, generator=generator) * 0.02
        elif "norm" in key and len(shape) == 1:
            tensor = 1 + 0.1 * torch.randn(shape, generator=generator)
        elif key == "logit_scale":
            tensor = torch.tensor(math.log(1 / 0.07))
        elif key.endswith("query_embs"):
            tensor = torch.randn(shape, generator=generator)
        else:
            tensor = torch.randn(shape, generator=generator) / math.sqrt(shape[-1])
        state[f"model.{key}"] = tensor.to(torch.bfloat16)
    state["model.input_embeddings.weight"] = (0.1 * torch.randn(config.num_img_tokens, config.llm_dim,
                                                                generator=generator)).to(torch.bfloat16)
    return dict(sorted(state.items()))


def write_release(folder: str, config: GILLHeadsConfig, seed: int = 0, decision_inputs: int | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    torch.save({"state_dict": heads_state(config, seed)}, os.path.join(folder, CHECKPOINT_FILE))
    args = {"opt_version": "facebook/opt-6.7b", "freeze_lm": True, "visual_encoder": "openai/clip-vit-large-patch14",
            "freeze_vm": True, "n_visual_tokens": config.n_visual_tokens, "ret_emb_dim": config.ret_emb_dim,
            "gen_emb_dim": config.gen_emb_dim, "text_emb_layers": [-1], "text_fc_mode": "gill_mapper",
            "ret_text_fc_mode": "linear", "num_tokens": config.num_img_tokens,
            "num_clip_tokens": config.num_clip_tokens}
    with open(os.path.join(folder, ARGS_FILE), "w") as handle:
        json.dump(args, handle, indent=4)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = decision_inputs or config.llm_dim
    torch.save({"state_dict": {"1.weight": torch.randn(2, inputs, generator=generator) / math.sqrt(inputs),
                               "1.bias": torch.zeros(2)}}, os.path.join(folder, DECISION_FILE))
    return folder


def tiny_heads_config(llm_dim: int = 128, vision_dim: int = 64) -> GILLHeadsConfig:
    return GILLHeadsConfig(llm_dim=llm_dim, vision_dim=vision_dim, n_visual_tokens=4, ret_emb_dim=32, mapper_dim=64,
                           mapper_ffn=256, mapper_encoder_layers=2, mapper_decoder_layers=2, num_clip_tokens=77,
                           gen_emb_dim=768, num_img_tokens=8)


def write_tiny_gill(root: str, seed: int = 0) -> dict[str, str]:
    """``root/gill_opt`` (release), ``root/opt`` (LLM), ``root/clip`` (vision): a complete tiny GILL."""
    paths = {"checkpoint": os.path.join(root, "gill_opt"), "llm": os.path.join(root, "opt"),
             "vision": os.path.join(root, "clip")}
    write_release(paths["checkpoint"], tiny_heads_config(), seed)
    write_opt(paths["llm"], seed=seed)
    write_clip_vision(paths["vision"], seed=seed)
    return paths
