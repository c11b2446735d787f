"""AlignerNet: the bridge from the MLLM's hidden states to SD 1.5's 77x768 CLIP text space.

Re-implemented from the torchscale semantics the official ``unilm/models/aligner.py`` uses
(``EncoderDecoderConfig`` defaults: Sub-LN, pre-LN, exact GELU, no embedding scale, no xPos).
Parameter names equal the official ``aligner.*`` keys with the prefix stripped, so official
state dicts load with no renaming.

* **M** (``encoder_proj`` + ``encoder_query`` + ``encoder``): used at inference and stage 3.
* **N** (``decoder_query`` + ``decoder`` + ``decoder_proj``): reconstructs the MLLM states from
  M's output; only stage 2 of training needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-5
HEAD_DIM = 64  # every official attention uses 64-wide heads


@dataclass(frozen=True)
class AlignerConfig:
    input_dim: int  # MLLM width (2048)
    hidden_size: int  # CLIP text width (768)
    ffn_dim: int
    encoder_proj_layers: int
    encoder_layers: int
    num_queries: int  # 77
    max_positions: int  # rows of the learned position tables (32768)
    decoder_layers: int = 0  # N: 0 when the checkpoint carries M only
    decoder_proj_layers: int = 0
    decoder_query_rows: int = 0

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM

    @property
    def has_reconstruction(self) -> bool:
        return self.decoder_layers > 0


class AlignerAttention(nn.Module):
    """torchscale ``MultiheadAttention``: q/k/v/out with bias, optional Sub-LN before ``out_proj``."""

    def __init__(self, dim: int, num_heads: int, inner_layer_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.inner_attn_ln = nn.LayerNorm(dim, eps=LAYER_NORM_EPS) if inner_layer_norm else None

    def forward(
        self,
        hidden: torch.Tensor,
        memory: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        memory = hidden if memory is None else memory
        batch, q_len, dim = hidden.shape
        k_len = memory.shape[1]

        def heads(x: torch.Tensor, length: int) -> torch.Tensor:
            return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

        q = heads(self.q_proj(hidden), q_len)
        k = heads(self.k_proj(memory), k_len)
        v = heads(self.v_proj(memory), k_len)
        attend = None
        if key_padding_mask is not None:  # True where the key is padding
            attend = ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        out = out.transpose(1, 2).reshape(batch, q_len, dim)
        if self.inner_attn_ln is not None:
            out = self.inner_attn_ln(out)
        return self.out_proj(out)


class AlignerFeedForward(nn.Module):
    """fc1 -> exact GELU (in fp32, as torchscale) -> Sub-LN -> fc2."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(hidden)
        hidden = F.gelu(hidden.float()).type_as(hidden)
        return self.fc2(self.ffn_layernorm(hidden))


class AlignerEncoderLayer(nn.Module):
    def __init__(self, config: AlignerConfig):
        super().__init__()
        dim = config.hidden_size
        self.self_attn = AlignerAttention(dim, config.num_heads, inner_layer_norm=True)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn = AlignerFeedForward(dim, config.ffn_dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.self_attn_layer_norm(hidden), key_padding_mask=padding_mask)
        return hidden + self.ffn(self.final_layer_norm(hidden))


class AlignerDecoderLayer(nn.Module):
    def __init__(self, config: AlignerConfig):
        super().__init__()
        dim = config.hidden_size
        self.self_attn = AlignerAttention(dim, config.num_heads, inner_layer_norm=True)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.encoder_attn = AlignerAttention(dim, config.num_heads, inner_layer_norm=False)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn = AlignerFeedForward(dim, config.ffn_dim)
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(
        self, hidden: torch.Tensor, memory: torch.Tensor, memory_padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.self_attn_layer_norm(hidden))
        hidden = hidden + self.encoder_attn(
            self.encoder_attn_layer_norm(hidden), memory, key_padding_mask=memory_padding_mask
        )
        return hidden + self.ffn(self.final_layer_norm(hidden))


class AlignerEncoder(nn.Module):
    """torchscale ``Encoder``: optional input Linear, learned positions from 2, layers, final LN."""

    def __init__(self, config: AlignerConfig, num_layers: int, input_dim: int | None, output_dim: int | None):
        super().__init__()
        dim = config.hidden_size
        self.embed_tokens = nn.Linear(input_dim, dim) if input_dim else None
        self.embed_positions = nn.Embedding(config.max_positions, dim)
        self.layers = nn.ModuleList(AlignerEncoderLayer(config) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.output_projection = nn.Linear(dim, output_dim) if output_dim else None

    def forward(self, inputs: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.embed_tokens(inputs) if self.embed_tokens is not None else inputs
        # Positions 2..T+1 whatever the padding (torchscale PositionalEmbedding), then pads zeroed.
        positions = torch.arange(2, hidden.shape[1] + 2, device=hidden.device)
        hidden = hidden + self.embed_positions(positions).to(hidden.dtype)
        if padding_mask is not None:
            hidden = hidden * (~padding_mask).unsqueeze(-1).to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, padding_mask)
        hidden = self.layer_norm(hidden)
        if self.output_projection is not None:
            hidden = self.output_projection(hidden)
        return hidden


class AlignerDecoder(nn.Module):
    """torchscale ``Decoder`` with no positions and no causal mask: queries attend to memory."""

    def __init__(self, config: AlignerConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(AlignerDecoderLayer(config) for _ in range(num_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, memory_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = queries
        for layer in self.layers:
            hidden = layer(hidden, memory, memory_padding_mask)
        return self.layer_norm(hidden)


class AlignerNet(nn.Module):
    """M (and, for stage-2 checkpoints, N) with the official parameter names."""

    def __init__(self, config: AlignerConfig):
        super().__init__()
        self.config = config
        self.encoder_proj = AlignerEncoder(config, config.encoder_proj_layers, config.input_dim, None)
        self.encoder_query = nn.Parameter(torch.zeros(config.num_queries, config.hidden_size))
        self.encoder = AlignerDecoder(config, config.encoder_layers)
        if config.has_reconstruction:
            self.decoder_query = nn.Parameter(torch.zeros(config.decoder_query_rows, config.hidden_size))
            self.decoder = AlignerDecoder(config, config.decoder_layers)
            self.decoder_proj = AlignerEncoder(config, config.decoder_proj_layers, None, config.input_dim)

    def forward(self, mllm_hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """M: (B, T, input_dim) MLLM states -> (B, num_queries, hidden_size) U-Net context."""
        memory = self.encoder_proj(mllm_hidden, padding_mask)
        queries = self.encoder_query.unsqueeze(0).expand(mllm_hidden.shape[0], -1, -1)
        return self.encoder(queries, memory, padding_mask)

    def reconstruct(self, aligned: torch.Tensor, length: int) -> torch.Tensor:
        """N: (B, num_queries, hidden) -> (B, length, input_dim), the stage-2 reconstruction."""
        if not self.config.has_reconstruction:
            raise RuntimeError("this AlignerNet has no decoder N (the checkpoint carries M only).")
        queries = self.decoder_query[:length].unsqueeze(0).expand(aligned.shape[0], -1, -1)
        return self.decoder_proj(self.decoder(queries, aligned))
