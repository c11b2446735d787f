"""Kosmos-G encoder side: MLLM + vision tower + connector (transformers Kosmos-2) + AlignerNet.

The MLLM, CLIP ViT-L/14 tower and XConnector of Kosmos-G are the Kosmos-2 modules of
transformers with a 64,007-token vocabulary, so we reuse them; only AlignerNet is ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aligner import AlignerNet
from .config import KosmosGConfig


class KosmosGModel(nn.Module):
    def __init__(self, config: KosmosGConfig):
        super().__init__()
        from transformers.models.kosmos2.modeling_kosmos2 import (
            Kosmos2ImageToTextProjection,
            Kosmos2TextModel,
            Kosmos2VisionModel,
        )

        self.config = config
        kosmos2 = config.kosmos2_config()
        self.vision_model = Kosmos2VisionModel(kosmos2.vision_config)
        self.image_to_text_projection = Kosmos2ImageToTextProjection(kosmos2)
        self.text_model = Kosmos2TextModel(kosmos2.text_config)
        self.aligner = AlignerNet(config.aligner) if config.aligner else None

    def reset_non_persistent_buffers(self, device: torch.device | str) -> None:
        """Rebuild the buffers a state dict does not carry (needed after building on ``meta``)."""
        embeddings = self.vision_model.model.embeddings
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
        positions = self.text_model.model.embed_positions
        rows, width = positions.weights.shape  # the table grows on demand for longer inputs
        table = positions.get_embedding(rows, width, positions.padding_idx)
        positions.weights = table.to(device=device, dtype=self.text_model.model.embed_tokens.weight.dtype)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixels -> (N, Q, D) connector outputs.

        ``ln_post`` on all tokens, then unit L2 norm per token, then the XConnector.
        """
        hidden = self.vision_model(pixel_values=pixel_values).last_hidden_state
        hidden = self.vision_model.model.post_layernorm(hidden)
        hidden = F.normalize(hidden, dim=-1)
        embeds, _ = self.image_to_text_projection(hidden)
        return embeds

    def mllm_hidden_states(
        self, tokens: torch.Tensor, image_embeds: torch.Tensor | None, image_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Final-LayerNorm states of all positions. Causal mask only, as the official LMDecoder
        (right padding keeps real tokens from seeing pads)."""
        output = self.text_model(
            input_ids=tokens,
            image_embeds=image_embeds,
            image_embeds_position_mask=image_mask if image_embeds is not None else None,
            attention_mask=None,
            use_cache=False,
        )
        return output.last_hidden_state

    def align(self, mllm_hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.aligner is None:
            raise RuntimeError("this model has no AlignerNet (stage-1 checkpoint).")
        return self.aligner(mllm_hidden, padding_mask)

    def layers(self) -> list[nn.Module]:
        """Every transformer layer in execution order, for progress and interrupt hooks."""
        result = list(self.vision_model.model.encoder.layers) + list(self.text_model.model.layers)
        if self.aligner is not None:
            result += list(self.aligner.encoder_proj.layers) + list(self.aligner.encoder.layers)
        return result
