"""Model sizes, inferred from tensor shapes only.

Official checkpoints carry a fairseq ``cfg``, but converted files, hand-made subsets and other
model sizes may not, so every number here comes from the weights: widths from matrix shapes,
layer counts from key indices, heads from the 64-wide head rule of every official attention,
image size from the position table and the patch kernel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import CheckpointError
from ..weights.keys import count_layers
from .aligner import HEAD_DIM, AlignerConfig

TEXT = "gpt_model.decoder."
VISION = "img_model.visual."
CONNECTOR = "img_connector."
ALIGNER = "aligner."
# The MLLM was trained on sequences of at most this many tokens (fairseq ``tokens_per_sample``).
OFFICIAL_MAX_TOKENS = 2048





@dataclass(frozen=True)
class KosmosGConfig:
    vocab_size: int
    text_dim: int
    text_layers: int
    text_ffn_dim: int
    vision_dim: int
    vision_layers: int
    vision_ffn_dim: int
    patch_size: int
    image_size: int
    latent_queries: int
    aligner: AlignerConfig | None

    @property
    def text_heads(self) -> int:
        return self.text_dim // HEAD_DIM

    @property
    def vision_heads(self) -> int:
        return self.vision_dim // HEAD_DIM

    @property
    def output_dim(self) -> int:
        return self.aligner.hidden_size if self.aligner else 0

    @property
    def max_tokens(self) -> int:
        limit = OFFICIAL_MAX_TOKENS
        if self.aligner:  # aligner positions run 2..T+1 in a table of max_positions rows
            limit = min(limit, self.aligner.max_positions - 2)
        return limit

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> KosmosGConfig:
        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise CheckpointError(f"checkpoint lacks {key}, which every Kosmos-G checkpoint has.")
            return tuple(shapes[key])

        keys = list(shapes)
        vocab_size, text_dim = shape(TEXT + "embed_tokens.weight")
        vision_dim, _, patch, _ = shape(VISION + "conv1.weight")
        positions = shape(VISION + "positional_embedding")[0]
        grid = math.isqrt(positions - 1)
        if grid * grid != positions - 1:
            raise CheckpointError(f"vision position table has {positions} rows; expected 1 + a square number.")
        aligner = None
        if ALIGNER + "encoder_query" in shapes:
            queries, hidden = shape(ALIGNER + "encoder_query")
            decoder_layers = count_layers(keys, ALIGNER + "decoder.layers.")
            aligner = AlignerConfig(
                input_dim=shape(ALIGNER + "encoder_proj.embed_tokens.weight")[1],
                hidden_size=hidden,
                ffn_dim=shape(ALIGNER + "encoder_proj.layers.0.ffn.fc1.weight")[0],
                encoder_proj_layers=count_layers(keys, ALIGNER + "encoder_proj.layers."),
                encoder_layers=count_layers(keys, ALIGNER + "encoder.layers."),
                num_queries=queries,
                max_positions=shape(ALIGNER + "encoder_proj.embed_positions.weight")[0],
                decoder_layers=decoder_layers,
                decoder_proj_layers=count_layers(keys, ALIGNER + "decoder_proj.layers.") if decoder_layers else 0,
                decoder_query_rows=shape(ALIGNER + "decoder_query")[0] if decoder_layers else 0,
            )
        config = cls(
            vocab_size=vocab_size,
            text_dim=text_dim,
            text_layers=count_layers(keys, TEXT + "layers."),
            text_ffn_dim=shape(TEXT + "layers.0.ffn.fc1.weight")[0],
            vision_dim=vision_dim,
            vision_layers=count_layers(keys, VISION + "transformer.resblocks."),
            vision_ffn_dim=shape(VISION + "transformer.resblocks.0.mlp.c_fc.weight")[0],
            patch_size=patch,
            image_size=grid * patch,
            latent_queries=shape(CONNECTOR + "latent_query")[0],
            aligner=aligner,
        )
        for name, width in (("MLLM", text_dim), ("vision tower", vision_dim), ("AlignerNet", config.output_dim)):
            if width % HEAD_DIM:
                raise CheckpointError(f"{name} width {width} is not a multiple of the 64-wide attention heads.")
        return config

    def kosmos2_config(self):
        """transformers ``Kosmos2Config`` for the MLLM, vision tower and connector."""
        from transformers import Kosmos2Config
        from transformers.models.kosmos2.modeling_kosmos2 import Kosmos2PreTrainedModel

        config = Kosmos2Config(
            text_config=dict(
                vocab_size=self.vocab_size,
                embed_dim=self.text_dim,
                layers=self.text_layers,
                ffn_dim=self.text_ffn_dim,
                attention_heads=self.text_heads,
                activation_function="gelu",
                layer_norm_eps=1e-5,
                scale_embedding=True,
                dropout=0.0,
                attention_dropout=0.0,
                activation_dropout=0.0,
                layerdrop=0.0,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                use_cache=False,
            ),
            vision_config=dict(
                hidden_size=self.vision_dim,
                intermediate_size=self.vision_ffn_dim,
                num_hidden_layers=self.vision_layers,
                num_attention_heads=self.vision_heads,
                image_size=self.image_size,
                patch_size=self.patch_size,
                hidden_act="quick_gelu",
                layer_norm_eps=1e-5,
                attention_dropout=0.0,
                dropout=0.0,
            ),
            latent_query_num=self.latent_queries,
        )
        # SDPA where this transformers version offers it for Kosmos-2 (4.5x+), else eager
        attention = "sdpa" if getattr(Kosmos2PreTrainedModel, "_supports_sdpa", False) else "eager"
        for sub in (config, config.text_config, config.vision_config):
            sub._attn_implementation = attention
        return config
