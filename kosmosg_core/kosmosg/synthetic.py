"""Random Kosmos-G checkpoints and tokenizers in the official formats.

Real weights cannot be downloaded everywhere (CI, benchmarks, the offline smoke run), so these
helpers write files that have the official layout, key names and dtypes at any size: the
benchmark uses the real size, tests use tiny ones.
"""

from __future__ import annotations

import io
import math
import os

import torch

from .aligner import AlignerConfig
from .checkpoint import official_key
from .config import KosmosGConfig
from .tokenizer import DICT_FILENAME, SPM_FILENAME

_CORPUS = (
    "a photo of a dog wearing a red hat in the jungle. a cat sitting on a wooden table next to an apple. "
    "an oil painting in the style of van gogh, a watercolor of a mountain under a blue sky at sunset. "
    "a close up of a person taking a selfie at the beach, blurry, low quality, ugly art, bright colors."
)


def official_size(aligner_layers: int = 12) -> KosmosGConfig:
    """The released Kosmos-G sizes (1.89B parameters for MLLM + AlignerNet M)."""
    return KosmosGConfig(
        vocab_size=64007, text_dim=2048, text_layers=24, text_ffn_dim=8192,
        vision_dim=1024, vision_layers=24, vision_ffn_dim=4096, patch_size=14, image_size=224,
        latent_queries=64,
        aligner=AlignerConfig(input_dim=2048, hidden_size=768, ffn_dim=3072, encoder_proj_layers=aligner_layers,
                              encoder_layers=aligner_layers, num_queries=77, max_positions=32768),
    )


def tiny_size(vocab_size: int, output_dim: int = 64, with_reconstruction: bool = False) -> KosmosGConfig:
    """A seconds-fast model with the official structure (heads 64 wide, FFN 4x)."""
    return KosmosGConfig(
        vocab_size=vocab_size, text_dim=128, text_layers=2, text_ffn_dim=512,
        vision_dim=64, vision_layers=2, vision_ffn_dim=256, patch_size=14, image_size=56,
        latent_queries=8,
        aligner=AlignerConfig(
            input_dim=128, hidden_size=output_dim, ffn_dim=4 * output_dim, encoder_proj_layers=2,
            encoder_layers=2, num_queries=77, max_positions=4096,
            decoder_layers=2 if with_reconstruction else 0,
            decoder_proj_layers=2 if with_reconstruction else 0,
            decoder_query_rows=4096 if with_reconstruction else 0,
        ),
    )


def official_shapes(config: KosmosGConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for ``config``, including the tied projection and dead buffers."""
    from .modeling import KosmosGModel

    with torch.device("meta"):
        model = KosmosGModel(config)
    shapes = {official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    text = "gpt_model.decoder."
    shapes[text + "output_projection.weight"] = shapes[text + "embed_tokens.weight"]
    shapes[text + "embed_positions._float_tensor"] = (1,)
    shapes[text + "self_attn_sope.scale"] = (32,)
    return shapes


def _random(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if key.endswith(("_float_tensor", "sope.scale")):
        return torch.zeros(shape)
    if len(shape) == 1 and key.endswith(".bias"):
        return torch.randn(shape, generator=generator) * 0.02
    if len(shape) == 1 and ("norm" in key or "_ln" in key or "ln_" in key):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if key.endswith(("latent_query", "encoder_query", "decoder_query", "embed_positions.weight")):
        return torch.randn(shape, generator=generator)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def random_state_dict(config: KosmosGConfig, seed: int = 0, dtype: torch.dtype = torch.float16) -> dict:
    """Official-named random weights; the output projection shares the embedding's storage."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    tied = "gpt_model.decoder.output_projection.weight"
    for key, shape in official_shapes(config).items():
        if key == tied:
            continue
        state[key] = _random(key, shape, generator).to(dtype)
    embed = state["gpt_model.decoder.embed_tokens.weight"]
    embed[1].zero_()  # <pad> row, as fairseq's padding_idx
    state[tied] = embed
    return state


def write_official_checkpoint(path: str, config: KosmosGConfig, seed: int = 0, **extra) -> str:
    """A fairseq-format file like ``checkpoint_final.pt``; ``extra`` adds/overrides top-level entries."""
    payload = {
        "model": random_state_dict(config, seed),
        "args": None,
        "cfg": {"model": {"_name": "kosmosg", "decoder_embed_dim": config.text_dim}, "task": {"_name": "kosmosg"}},
        "optimizer_history": [],
        "extra_state": {},
    }
    payload.update(extra)
    torch.save(payload, path)
    return path


def write_tiny_tokenizer(directory: str, pieces: int = 300, dict_lines: int | None = None) -> str:
    """Train a small SentencePiece model (official trainer settings) and write ``dict.txt``.

    ``dict_lines`` pads the dictionary with filler pieces, e.g. 63,997 for the official
    64,007-entry vocabulary at the real model size.
    """
    import sentencepiece as spm

    os.makedirs(directory, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.split(". ") * 20),
        model_writer=model,
        vocab_size=pieces,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        character_coverage=1.0,
        hard_vocab_limit=False,
        byte_fallback=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2,
    )
    with open(os.path.join(directory, SPM_FILENAME), "wb") as handle:
        handle.write(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    words = [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
    if dict_lines is not None:
        words += [f"<filler_{i}>" for i in range(dict_lines - len(words))]
    with open(os.path.join(directory, DICT_FILENAME), "w", encoding="utf-8") as handle:
        handle.write("\n".join(f"{w} 1" for w in words))
    return directory


def dict_lines_for(vocab_size: int) -> int:
    """dict.txt lines that give a fairseq vocabulary of ``vocab_size`` (4 specials + 6 appended)."""
    return vocab_size - 10
