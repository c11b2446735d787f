"""GILL at inference: interleaved context -> [IMG] hidden states -> conditioning, decision,
retrieval embedding; and text generation with a KV cache.

Semantics follow the official ``GILL.generate_for_images_and_texts``: 4 visual tokens per
image from CLIP's pooled feature, BOS only on the first text segment, empty text segments
dropped, no attention mask (batch of one). The [IMG] hidden states come from one forward pass
over context + [IMG0..7] (what the official forced generation computes). Generation keeps the
official logit rules ([IMG1..7] never sampled, [IMG0] scaled, the whole block appended when
[IMG0] is chosen) but reuses the KV cache instead of re-running the whole sequence each step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import PromptError
from ..image_processing import as_pil_images, clip_processor_pixels
from ..prompt import split_prompt
from .modeling import DecisionModel, GILLHeads

VISUAL = -100  # marks visual-prefix positions in input_ids (the official convention)


@dataclass
class ImageSlot:
    """What GILL says about one image slot."""

    cond: torch.Tensor  # (1, 77, 768) SD prompt_embeds
    ret_emb: torch.Tensor  # (1, E), normalised
    img_hidden: torch.Tensor  # (1, 8, D)
    decision_logits: torch.Tensor | None = None  # (1, 2): [gen, ret]
    decision_note: str = ""

    @property
    def decision(self) -> torch.Tensor | None:
        return None if self.decision_logits is None else self.decision_logits.softmax(-1)

    @property
    def choice(self) -> str:
        probs = self.decision
        return "unknown" if probs is None else ("gen" if probs[0, 0] >= probs[0, 1] else "ret")


@dataclass
class Generation:
    ids: torch.Tensor  # (1, steps + 7 per image slot), raw, as the official generate returns
    text: str  # decoded text, image slots shown as <i>, cut at the first newline
    slots: list[ImageSlot] = field(default_factory=list)


class GILL:
    def __init__(self, tokenizer, lm, vision, heads: GILLHeads, img_token_ids: list[int], image_size: int,
                 decision: DecisionModel | None = None, decision_note: str = "", pixel_mean=None, pixel_std=None,
                 resize: int | None = None):
        self.tokenizer, self.lm, self.vision, self.heads = tokenizer, lm, vision, heads
        self.img_token_ids = img_token_ids
        self.image_size = image_size  # the vision tower's input (the crop)
        self.resize = resize or image_size  # the processor's shortest edge before cropping
        self.decision_model, self.decision_note = decision, decision_note
        self.pixel_stats = (pixel_mean, pixel_std)
        self.index = None  # a RetrievalIndex, for retrieval and the legacy decision model

    # -- placement -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.heads.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.heads.logit_scale.dtype

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.lm, self.vision, self.heads, self.decision_model) if m is not None]

    def input_embeddings(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)
        return self.lm.get_input_embeddings()(ids)

    # -- context -------------------------------------------------------------------------------
    def image_features(self, images) -> torch.Tensor:
        """CLIP ``pooler_output`` (post-LN CLS, before the projection) for each image."""
        mean, std = self.pixel_stats
        kwargs = {"mean": mean, "std": std} if mean is not None else {}
        pixels = clip_processor_pixels(images, self.resize, crop=self.image_size, **kwargs)
        vision_dtype = next(self.vision.parameters()).dtype
        return self.vision(pixel_values=pixels.to(self.device, vision_dtype)).pooler_output.to(self.dtype)

    @torch.inference_mode()
    def context(self, prompt: str, images=()) -> tuple[torch.Tensor, list[int]]:
        """Input embeddings (1, T, D) of the interleaved prompt, and ids with -100 at visual slots."""
        pictures = as_pil_images(images)
        segments, order = split_prompt(prompt, len(pictures))
        visual = self.heads.visual_prefix(self.image_features([pictures[i] for i in order])) if order else None
        pieces, ids, add_bos = [], [], True
        for position, text in enumerate(segments):
            if text:  # empty segments are dropped, as the official demo does
                text_ids = self.tokenizer(text, add_special_tokens=add_bos).input_ids
                add_bos = False
                pieces.append(self.input_embeddings(text_ids))
                ids += text_ids
            if position < len(order):
                pieces.append(visual[position : position + 1])
                ids += [VISUAL] * visual.shape[1]
        if not pieces:
            raise PromptError("the GILL prompt is empty: give text, images, or both.")
        return torch.cat(pieces, dim=1), ids

    def _decoder(self, embeds: torch.Tensor, cache=None):
        """OPT decoder: final-LayerNorm hidden states (== ``hidden_states[-1]``) and the cache.

        ``cache``: ``False`` for none, ``None`` to start one, or the cache to extend."""
        use_cache = cache is not False
        out = self.lm.model.decoder(inputs_embeds=embeds, past_key_values=cache if use_cache else None, use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    # -- image slots ---------------------------------------------------------------------------
    @torch.inference_mode()
    def image_slot(self, img_hidden: torch.Tensor) -> ImageSlot:
        img_embeds = self.input_embeddings(self.img_token_ids)
        cond = self.heads.generation_embedding(img_hidden, img_embeds)
        ret_emb = self.heads.retrieval_text_embedding(img_hidden)
        logits, note = self._decision_logits(img_hidden, ret_emb)
        return ImageSlot(cond=cond, ret_emb=ret_emb, img_hidden=img_hidden, decision_logits=logits, decision_note=note)

    def _decision_logits(self, img_hidden, ret_emb):
        if self.decision_model is None:
            return None, self.decision_note
        features = img_hidden[:, 0]
        if self.decision_note == "legacy":  # the Hugging Face copy also reads the best retrieval score
            if self.index is None:
                return None, ("this decision model (the older Hugging Face copy, 4097 inputs) needs a retrieval "
                              "index for its best-score input; load one, or use decision_model.pth.tar from GitHub")
            best = self.index.scores(ret_emb, self.heads.logit_scale).max(dim=-1, keepdim=True).values
            features = torch.cat([features, best.to(features.dtype)], dim=-1)
        return self.decision_model(features.to(self.decision_model.layers[1].weight.dtype)).float(), self.decision_note

    @torch.inference_mode()
    def encode(self, prompt: str, images=()) -> tuple[ImageSlot, list[int]]:
        """Context + [IMG0..7] in one forward pass -> the image slot's outputs."""
        context, ids = self.context(prompt, images)
        embeds = torch.cat([context, self.input_embeddings(self.img_token_ids)], dim=1)
        hidden, _ = self._decoder(embeds, cache=False)
        return self.image_slot(hidden[:, -len(self.img_token_ids) :]), ids

    # -- generation ----------------------------------------------------------------------------
    def _next_token(self, logits: torch.Tensor, step: int, temperature: float, top_p: float, min_word_tokens: int,
                    ret_scale: float, gen_scale: float, generator: torch.Generator | None) -> int:
        img0, rest = self.img_token_ids[0], self.img_token_ids[1:]
        logits = logits.float().clone()
        logits[:, rest] = float("-inf")
        if step < min_word_tokens:
            logits[:, img0] = float("-inf")
        else:
            for scale in (ret_scale, gen_scale):  # retrieval and generation share [IMG0]
                if scale > 1:
                    logits[:, img0] = logits[:, img0].abs() * scale
        if temperature == 0:
            if top_p != 1.0:
                raise ValueError("top_p needs temperature > 0 (greedy decoding ignores it).")
            return int(logits.argmax(dim=-1))
        logits = logits / temperature
        if top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            remove = torch.cumsum(sorted_logits.softmax(-1), dim=-1) > top_p
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            logits[0, order[0, remove[0]]] = float("-inf")
        return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))

    @torch.inference_mode()
    def generate(self, prompt: str, images=(), max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 min_word_tokens: int = 0, ret_scale: float = 1.0, gen_scale: float = 1.0, seed: int | None = None,
                 use_cache: bool = True, stop_at_newline: bool = True,
                 callback: Callable[[int, int], None] | None = None) -> Generation:
        """Greedy (temperature 0) or sampled text; each [IMG0] becomes an image slot."""
        context, _ = self.context(prompt, images)
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        newline = self.tokenizer("\n", add_special_tokens=False).input_ids[0]
        hidden, cache = self._decoder(context, cache=None if use_cache else False)
        embeds, new_ids, slots = context, [], []
        for step in range(max_new_tokens):
            if callback is not None:
                callback(step, max_new_tokens)
            logits = self.lm.lm_head(hidden[:, -1:])[:, -1]
            token = self._next_token(logits.to(torch.float32).cpu(), step, temperature, top_p, min_word_tokens,
                                     ret_scale, gen_scale, generator)
            chosen = list(self.img_token_ids) if token == self.img_token_ids[0] else [token]
            new_ids += chosen
            if stop_at_newline and token == newline and len(new_ids) > 1:
                break
            if step == max_new_tokens - 1 and len(chosen) == 1:
                break  # nothing further needs this token's forward pass
            step_embeds = self.input_embeddings(chosen)
            if use_cache:
                hidden, cache = self._decoder(step_embeds, cache)
                new_hidden = hidden
            else:
                embeds = torch.cat([embeds, step_embeds], dim=1)
                hidden, _ = self._decoder(embeds, cache=False)
                new_hidden = hidden[:, -len(chosen) :]
            if len(chosen) > 1:
                slots.append(self.image_slot(new_hidden))
        ids = torch.tensor([new_ids], dtype=torch.long)
        return Generation(ids=ids, text=self.decode(new_ids, stop_at_newline), slots=slots)

    def decode(self, ids: list[int], stop_at_newline: bool = True) -> str:
        """Text of generated ids; each [IMG0..7] block becomes ``<i>``."""
        newline = self.tokenizer("\n", add_special_tokens=False).input_ids[0]
        if stop_at_newline and newline in ids[1:]:
            ids = ids[: ids.index(newline, 1)]
        parts, run = [], []
        img = set(self.img_token_ids)
        for token in ids:
            if token == self.img_token_ids[0]:
                parts += [self.tokenizer.decode(run, skip_special_tokens=True), "<i>"]
                run = []
            elif token not in img:
                run.append(token)
        parts.append(self.tokenizer.decode(run, skip_special_tokens=True))
        return "".join(parts)
