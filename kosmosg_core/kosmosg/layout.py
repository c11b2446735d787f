"""Kosmos-G's token layout of an interleaved prompt (``AppModel.kosmosg_preprocess``): ``<s>``, then
for each placeholder the ids of the text before it, ``<image>``, Q slots (id of ``<image>`` as a
placeholder), ``</image>``; then the trailing text. No ``</s>``. The placeholders themselves are
parsed by the shared :mod:`kosmosg_core.prompt` (GILL uses the same)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PromptError
from ..prompt import check_text, has_placeholder, split_prompt
from .tokenizer import KosmosGTokenizer


@dataclass(frozen=True)
class PromptLayout:
    tokens: list[int]
    image_mask: list[int]  # 1 on the Q slots of each image
    image_order: list[int]  # for each placeholder in prompt order, the index of the image it shows


def build_layout(tokenizer: KosmosGTokenizer, prompt: str, num_images: int, slots: int) -> PromptLayout:
    """Token ids and slot mask of an interleaved prompt, as the official demo builds them."""
    segments, order = split_prompt(prompt, num_images)
    tokens, mask = [tokenizer.bos_id], [0]
    for text in segments[:-1]:
        ids = text_ids(tokenizer, text)
        tokens += ids + [tokenizer.boi_id] * (slots + 1) + [tokenizer.eoi_id]
        mask += [0] * len(ids) + [0] + [1] * slots + [0]
    ids = text_ids(tokenizer, segments[-1])
    tokens += ids
    mask += [0] * len(ids)
    return PromptLayout(tokens, mask, order)


def build_negative_tokens(tokenizer: KosmosGTokenizer, negative: str | None) -> list[int]:
    """``[<s>] + ids(negative)``; an empty negative gives ``[<s>]``, the official null prompt."""
    if negative is not None:
        check_text(negative, "negative prompt")
    if negative and has_placeholder(negative):
        raise PromptError("the negative prompt is text only: remove the image placeholders from it.")
    return [tokenizer.bos_id] + (text_ids(tokenizer, negative) if negative else [])


def text_ids(tokenizer: KosmosGTokenizer, text: str) -> list[int]:
    """Ids of user text. SentencePiece never turns typed ``<image>`` or ``</s>`` into those
    symbols, but a model that lists one as a piece would: such ids become ``<unk>``, so the
    layout's own ``<s>``/``<image>``/``</image>`` stay the only ones in the sequence."""
    ids = tokenizer.encode(text)
    reserved = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.boi_id, tokenizer.eoi_id}
    return [tokenizer.unk_id if i in reserved else i for i in ids]
