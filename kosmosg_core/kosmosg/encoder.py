"""Prompts and images in, SD 1.5 conditioning out.

:class:`KosmosGEncoder` ties the tokenizer, the prompt layout, the pixel pipeline and the model
together. It batches prompts of different lengths with right padding (the MLLM is causal, so
real tokens never see the pads; AlignerNet masks ``tokens == <pad>``), runs every image of the
batch through the vision tower at once, and computes the null embedding once per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import PromptError
from ..hooks import LayerCallback, per_layer
from ..image_processing import as_pil_images, preprocess_images
from .layout import PromptLayout, build_layout, build_negative_tokens
from .modeling import KosmosGModel
from .tokenizer import KosmosGTokenizer


@dataclass
class EncodeOutput:
    cond: torch.Tensor  # (B, 77, D)
    uncond: torch.Tensor  # (B, 77, D)
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Forward:
    tokens: torch.Tensor
    image_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    image_embeds: torch.Tensor | None
    mllm_hidden: torch.Tensor
    aligned: torch.Tensor
    lengths: list[int]


def pad_batch(sequences: Sequence[list[int]], masks: Sequence[list[int]] | None, pad_id: int,
              pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, image-slot mask), each (B, T): right-padded with the tokenizer's ``<pad>`` id
    to the longest sequence, or cut/padded to ``pad_to``."""
    if pad_to is not None:
        sequences = [s[:pad_to] for s in sequences]
        masks = None if masks is None else [m[:pad_to] for m in masks]
    width = pad_to or max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    image_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        if masks is not None:
            image_mask[row, : len(masks[row])] = torch.tensor(masks[row], dtype=torch.long)
    return tokens, image_mask


def mllm_forward(model: KosmosGModel, sequences: Sequence[list[int]], masks: Sequence[list[int]], pixel_values,
                 pad_id: int, device, dtype: torch.dtype, pad_to: int | None = None):
    """The one padded MLLM pass, for inference (the encoder calls it under ``torch.inference_mode``)
    and for training (called with gradients): pad the prompts with ``pad_id``, encode the images,
    run the MLLM. Returns (tokens, image_mask, image_embeds or None, final-LN hidden states), the
    first two and the last on ``device``."""
    tokens, image_mask = pad_batch(sequences, masks, pad_id, pad_to)
    tokens, image_mask = tokens.to(device), image_mask.to(device)
    image_embeds = None
    if pixel_values is not None and len(pixel_values):
        image_embeds = model.encode_images(pixel_values.to(device=device, dtype=dtype))
    hidden = model.mllm_hidden_states(tokens, image_embeds, image_mask)
    return tokens, image_mask, image_embeds, hidden


class KosmosGEncoder:
    def __init__(self, model: KosmosGModel, tokenizer: KosmosGTokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None  # (mllm_hidden, aligned) of [<s>]
        self._null_key: tuple[torch.device, torch.dtype] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.text_model.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.text_model.model.embed_tokens.weight.dtype

    def to(self, device: str | torch.device) -> KosmosGEncoder:
        self.model.to(device)
        return self

    def compile(self) -> KosmosGEncoder:
        """``torch.compile`` the MLLM and the vision tower, with dynamic shapes (prompt lengths and
        image counts vary). The first encodes pay the compilation; the bench says when it pays off."""
        for module in (self.model.text_model, self.model.vision_model):
            module.forward = torch.compile(module.forward, dynamic=True)
        return self

    # -- prompt side ---------------------------------------------------------------------------
    def layout(self, prompt: str, num_images: int) -> PromptLayout:
        layout = build_layout(self.tokenizer, prompt, num_images, self.config.latent_queries)
        self._check_length(len(layout.tokens), f"{len(layout.image_order)} image(s)")
        return layout

    def negative_tokens(self, negative: str | None) -> list[int]:
        tokens = build_negative_tokens(self.tokenizer, negative)
        self._check_length(len(tokens), "negative prompt")
        return tokens

    def _check_length(self, length: int, what: str) -> None:
        limit = self.config.max_tokens
        if length > limit:
            raise PromptError(
                f"the prompt is {length} tokens long ({what}; each image takes "
                f"{self.config.latent_queries + 2} tokens) but Kosmos-G takes at most {limit}. "
                "Shorten the text or use fewer images."
            )

    # -- model side ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _forward(self, sequences: Sequence[list[int]], masks: Sequence[list[int]], pixel_values) -> _Forward:
        """The shared padded pass (:func:`mllm_forward`) under inference mode, then the AlignerNet."""
        tokens, image_mask, image_embeds, hidden = mllm_forward(
            self.model, sequences, masks, pixel_values, self.tokenizer.pad_id, self.device, self.dtype)
        lengths = [len(s) for s in sequences]
        padding = tokens.eq(self.tokenizer.pad_id) if min(lengths) < max(lengths) else None
        aligned = self.model.align(hidden, padding)
        return _Forward(tokens.cpu(), image_mask.cpu(), pixel_values, image_embeds, hidden, aligned, lengths)

    def null_embedding(self) -> torch.Tensor:
        """``M(MLLM([<s>]))``, the official CFG null embedding; computed once per model."""
        return self._null_forward()[1]

    def _null_forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.device, self.dtype)  # the model may have been moved (e.g. by ComfyUI's offloading)
        if self._null is None or self._null_key != key:
            out = self._forward([[self.tokenizer.bos_id]], [[0]], None)
            self._null, self._null_key = (out.mllm_hidden, out.aligned), key
        return self._null

    def layer_callback(self, callback: LayerCallback | None):
        """Call ``callback(done, total)`` before every transformer layer (progress, interrupts)."""
        return per_layer(self.model.layers(), callback)

    def encode_batch(
        self,
        prompts: Sequence[str],
        images: Sequence | None = None,
        negatives: Sequence[str | None] | None = None,
        intermediates: bool = False,
        callback: LayerCallback | None = None,
    ) -> EncodeOutput:
        """Encode several prompts in one batch.

        ``images[i]`` holds the images of ``prompts[i]`` (PIL images, paths, or [B,H,W,C]
        tensors, where a batch counts as B images). ``negatives[i]`` is text or empty/None for
        the null embedding. Returns ``cond`` and ``uncond`` shaped (len(prompts), 77, D).
        """
        images = list(images) if images is not None else [[] for _ in prompts]
        negatives = list(negatives) if negatives is not None else [None] * len(prompts)
        if not (len(prompts) == len(images) == len(negatives)):
            raise PromptError(
                f"got {len(prompts)} prompt(s), {len(images)} image list(s) and {len(negatives)} negative(s); "
                "pass one of each per prompt."
            )
        pil_lists = [as_pil_images(item) for item in images]
        layouts = [self.layout(p, len(pils)) for p, pils in zip(prompts, pil_lists, strict=True)]
        ordered = [pils[i] for layout, pils in zip(layouts, pil_lists, strict=True) for i in layout.image_order]
        pixels = preprocess_images(ordered, self.config.image_size) if ordered else None

        neg_tokens = [self.negative_tokens(n) for n in negatives]
        extra = [t for t in neg_tokens if len(t) > 1]  # text negatives ride in the same batch
        sequences = [layout.tokens for layout in layouts] + extra
        masks = [layout.image_mask for layout in layouts] + [[0] * len(t) for t in extra]
        with self.layer_callback(callback):
            out = self._forward(sequences, masks, pixels)
            null_hidden, null_aligned = self._null_forward() if len(extra) < len(prompts) else (None, None)

        count = len(prompts)
        cond = out.aligned[:count]
        uncond_rows, uncond_hidden, next_extra = [], [], count
        for tokens in neg_tokens:
            if len(tokens) > 1:
                uncond_rows.append(out.aligned[next_extra])
                uncond_hidden.append(out.mllm_hidden[next_extra, : len(tokens)])
                next_extra += 1
            else:
                uncond_rows.append(null_aligned[0])
                uncond_hidden.append(null_hidden[0])
        result = EncodeOutput(cond=cond, uncond=torch.stack(uncond_rows))
        if intermediates:
            result.intermediates = self._intermediates(out, count, neg_tokens, uncond_hidden)
        return result

    def _intermediates(self, out: _Forward, count: int, neg_tokens, uncond_hidden) -> dict[str, torch.Tensor]:
        """Per-prompt tensors named as in the official fixture (first prompt only when batched)."""
        length = out.lengths[0]
        result = {
            "tokens": out.tokens[:1, :length],
            "img_mask": out.image_mask[:1, :length],
            "mllm_hidden": out.mllm_hidden[:1, :length],
            "uncond_tokens": torch.tensor([neg_tokens[0]], dtype=torch.long),
            "uncond_mllm_hidden": uncond_hidden[0].unsqueeze(0),
        }
        images_first = int(out.image_mask[0].sum()) // self.config.latent_queries
        if out.pixel_values is not None and images_first:
            result["pixel_values"] = out.pixel_values[:images_first]
            result["image_embeds"] = out.image_embeds[:images_first]
        return result

    def encode(
        self,
        prompt: str,
        images=None,
        negative: str | None = None,
        intermediates: bool = False,
        callback: LayerCallback | None = None,
    ) -> EncodeOutput:
        """One prompt: ``cond`` and ``uncond`` shaped (1, 77, D)."""
        return self.encode_batch([prompt], [images or []], [negative], intermediates, callback)
