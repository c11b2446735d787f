"""GILL's trainable heads with the official parameter names (``model.`` prefix stripped).

The frozen OPT LLM and CLIP vision tower come from transformers; these are the ~50M parameters
of ``pretrained_ckpt.pth.tar`` that sit around them. GILLMapper is PyTorch's own
``nn.Transformer`` (pre-LN, ReLU, no masks), exactly the module the official code builds, so the
checkpoint's ``tfm.*`` keys load unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAPPER_HEADS = 4  # fixed by the official layers.py; shapes cannot tell it


@dataclass(frozen=True)
class GILLHeadsConfig:
    llm_dim: int  # OPT hidden size (4096)
    vision_dim: int  # CLIP pooled width (1024)
    n_visual_tokens: int  # 4
    ret_emb_dim: int  # 256
    mapper_dim: int  # 512
    mapper_ffn: int  # 2048
    mapper_encoder_layers: int
    mapper_decoder_layers: int
    num_clip_tokens: int  # 77
    gen_emb_dim: int  # 768
    num_img_tokens: int  # 8


class GILLMapper(nn.Module):
    """``TextFcLayer(mode='gill_mapper')``: (hidden + [IMG] input embeddings) -> 77 x 768."""

    def __init__(self, config: GILLHeadsConfig):
        super().__init__()
        self.fc = nn.Linear(config.llm_dim, config.mapper_dim)
        with warnings.catch_warnings():  # "enable_nested_tensor ... norm_first": irrelevant without masks
            warnings.simplefilter("ignore", UserWarning)
            self.tfm = nn.Transformer(
                d_model=config.mapper_dim, nhead=MAPPER_HEADS, num_encoder_layers=config.mapper_encoder_layers,
                num_decoder_layers=config.mapper_decoder_layers, dim_feedforward=config.mapper_ffn, dropout=0.0,
                batch_first=True, norm_first=True,
            )
        self.model = nn.Linear(config.mapper_dim, config.gen_emb_dim)
        self.query_embs = nn.Parameter(torch.zeros(1, config.num_clip_tokens, config.mapper_dim))

    def forward(self, img_hidden: torch.Tensor, img_input_embeds: torch.Tensor) -> torch.Tensor:
        memory = self.fc(img_hidden + img_input_embeds)
        queries = self.query_embs.expand(memory.shape[0], -1, -1)
        return self.model(self.tfm(memory, queries))


class LinearHead(nn.Module):
    """``TextFcLayer(mode='linear')``; keeps the official ``.model`` parameter name."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.model = nn.Linear(in_dim, out_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model(hidden)


class GILLHeads(nn.Module):
    def __init__(self, config: GILLHeadsConfig):
        super().__init__()
        self.config = config
        self.visual_embeddings = nn.Linear(config.vision_dim, config.llm_dim * config.n_visual_tokens)
        self.visual_fc = nn.Linear(config.vision_dim, config.ret_emb_dim)
        self.ret_text_hidden_fcs = nn.ModuleList([LinearHead(config.llm_dim, config.ret_emb_dim)])
        self.gen_text_hidden_fcs = nn.ModuleList([GILLMapper(config)])
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def visual_prefix(self, pooled: torch.Tensor) -> torch.Tensor:
        """CLIP pooled (N, vision_dim) -> (N, n_visual_tokens, llm_dim), reshaped row-major."""
        return self.visual_embeddings(pooled).reshape(pooled.shape[0], self.config.n_visual_tokens, -1)

    def retrieval_image_embeddings(self, pooled: torch.Tensor) -> torch.Tensor:
        """Unnormalised image-side retrieval embeddings, as the official index stores them."""
        return self.visual_fc(pooled)

    def retrieval_text_embedding(self, img_hidden: torch.Tensor) -> torch.Tensor:
        """Only [IMG0]'s hidden state counts; L2-normalised."""
        return F.normalize(self.ret_text_hidden_fcs[0](img_hidden)[:, 0], dim=-1)

    def generation_embedding(self, img_hidden: torch.Tensor, img_input_embeds: torch.Tensor) -> torch.Tensor:
        return self.gen_text_hidden_fcs[0](img_hidden, img_input_embeds)


class DecisionModel(nn.Module):
    """``Sequential(Dropout(0.5), Linear(in, 2))``: index 0 = generate, 1 = retrieve.

    The GitHub release reads the [IMG0] hidden state (in = LLM width); the older Hugging Face
    copy also reads the best retrieval score (in = LLM width + 1).
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(0.5), nn.Linear(in_features, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
