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

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import PromptError
from ..image_processing import as_pil_images, clip_processor_pixels
from ..prompt import split_prompt
from .modeling import DecisionModel, GILLHeads

VISUAL = -100  # marks visual-prefix positions in input_ids (the official convention)


def _cache_argument(decoder: torch.nn.Module) -> str:
    """The name under which ``decoder.forward`` takes its KV cache: ``cache`` (transformers >= 5.24)
    or ``past_key_values`` (older; deprecated from 5.24, removed in 5.40)."""
    import inspect

    parameters = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class GenerationSettingError(PromptError, ValueError):
    """A generation setting (temperature, top_p, max_new_tokens, ...) outside its range."""


def check_generation_settings(max_new_tokens, temperature, top_p, min_word_tokens=0, ret_scale=1.0,
                              gen_scale=1.0, seed=None) -> None:
    """One clear error for a setting no sampler can use (checked before any model work)."""
    def number(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GenerationSettingError(f"{name} must be a finite number, got {value!r}.")
        return value

    for name, value in (("max_new_tokens", max_new_tokens), ("min_word_tokens", min_word_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GenerationSettingError(f"{name} must be a whole number >= 0, got {value!r}.")
    if number("temperature", temperature) < 0:
        raise GenerationSettingError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}.")
    if not 0 < number("top_p", top_p) <= 1:
        raise GenerationSettingError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p!r}.")
    for name, value in (("ret_scale", ret_scale), ("gen_scale", gen_scale)):
        number(name, value)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64):
        raise GenerationSettingError(f"seed must be a whole number in [-2^63, 2^64), got {seed!r}.")


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

    @property
    def max_positions(self) -> int | None:
        """How many positions the LLM has (OPT: ``max_position_embeddings``, 2048)."""
        value = getattr(getattr(self.lm, "config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) and value > 0 else None

    def check_positions(self, context_length: int, reserve: int, what: str) -> None:
        """``context_length`` prompt positions plus ``reserve`` more must fit the LLM's positions."""
        limit = self.max_positions
        if limit is not None and context_length + reserve > limit:
            raise PromptError(
                f"the GILL prompt takes {context_length} positions (text tokens, "
                f"{self.heads.config.n_visual_tokens} per image) and {what} needs {reserve} more, but the "
                f"LLM has {limit} positions: shorten the prompt"
                f"{' or lower max_new_tokens' if 'generat' in what else ''}."
            )

    def text_ids(self, text: str, add_bos: bool) -> list[int]:
        """Token ids of user text. Text that spells an added or special token (``[IMG0]``,
        ``<|image|>``, ``</s>``) is tokenised as the literal characters it is, never as that token;
        any other text exactly as the tokenizer does it (the official path)."""
        literals = getattr(self, "_literal_strings", None)
        if literals is None:
            literals = self._literal_strings = tuple(
                {str(t) for t in self.tokenizer.get_added_vocab()} | {str(t) for t in self.tokenizer.all_special_tokens}
            )
        if not any(literal and literal in text for literal in literals):
            return list(self.tokenizer(text, add_special_tokens=add_bos).input_ids)
        prefix = list(self.tokenizer("", add_special_tokens=True).input_ids) if add_bos else []
        return prefix + self._plain_ids(text)

    def _plain_ids(self, text: str) -> list[int]:
        """The tokenizer's own normaliser, pre-tokeniser and BPE with no added tokens at all."""
        plain = getattr(self, "_plain_tokenizer", None)
        if plain is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            if backend is not None:
                from tokenizers import Tokenizer

                spec = json.loads(backend.to_str())
                spec["added_tokens"] = []
                plain = Tokenizer.from_str(json.dumps(spec))
            else:
                plain = False
            self._plain_tokenizer = plain
        if plain is False:  # a slow tokenizer: split_special_tokens turns off every added token
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids)
        return list(plain.encode(text, add_special_tokens=False).ids)

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
    def context(self, prompt: str, images=(), reserve: int = 0,
                what: str = "what follows") -> tuple[torch.Tensor, list[int]]:
        """Input embeddings (1, T, D) of the interleaved prompt, and ids with -100 at visual slots.

        ``T + reserve`` must fit the LLM's positions; checked before any embedding is made."""
        pictures = as_pil_images(images)
        segments, order = split_prompt(prompt, len(pictures))
        segment_ids, add_bos = [], True
        for text in segments:
            segment_ids.append(self.text_ids(text, add_bos) if text else None)  # empty segments are dropped,
            add_bos = add_bos and not text                                       # as the official demo does
        length = sum(len(t) for t in segment_ids if t) + self.heads.config.n_visual_tokens * len(order)
        self.check_positions(length, reserve, what)
        visual = self.heads.visual_prefix(self.image_features([pictures[i] for i in order])) if order else None
        pieces, ids = [], []
        for position, text_ids in enumerate(segment_ids):
            if text_ids is not None:
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

        ``cache``: ``False`` for none, ``None`` to start one, or the cache to extend. The cache is a
        ``transformers.DynamicCache`` that we create and that the decoder extends in place; it is
        passed under the name the installed decoder declares (``cache`` from transformers 5.24,
        ``past_key_values`` before), so no deprecated argument is used at either end."""
        decoder = self.lm.model.decoder
        if cache is False:
            return decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state, None
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache()
        seen = cache.get_seq_length()
        out = decoder(inputs_embeds=embeds, use_cache=True, **{_cache_argument(decoder): cache})
        if cache.get_seq_length() != seen + embeds.shape[1]:  # an API change must fail loudly, not decode garbage
            raise RuntimeError("the OPT decoder did not extend the KV cache it was given; this transformers "
                               "version is not supported, see requirements.txt")
        return out.last_hidden_state, cache

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
        context, ids = self.context(prompt, images, reserve=len(self.img_token_ids), what="the [IMG] block")
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
        check_generation_settings(max_new_tokens, temperature, top_p, min_word_tokens, ret_scale, gen_scale, seed)
        context, _ = self.context(prompt, images, reserve=max_new_tokens, what=f"generating {max_new_tokens} tokens")
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
            self._check_generated_length(context.shape[1], len(new_ids))
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

    def _check_generated_length(self, context_length: int, generated: int) -> None:
        limit = self.max_positions
        if limit is not None and context_length + generated > limit:
            raise PromptError(
                f"generation ran past the LLM's {limit} positions ({context_length} prompt + {generated} generated; "
                f"each image slot takes {len(self.img_token_ids)}): lower max_new_tokens or shorten the prompt."
            )

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
