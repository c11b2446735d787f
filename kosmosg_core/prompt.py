"""Interleaved prompts: where the images go.

``<i>`` is the official placeholder (the n-th ``<i>`` is the n-th image). ``<image1>``,
``<image2>``, ... name images by number and may repeat one image. The two styles do not mix in
one prompt, because "which image does this ``<i>`` mean" would then have two answers.

Shared by Kosmos-G and GILL; Kosmos-G's token layout is :mod:`kosmosg_core.kosmosg.layout`.

Prompts are user text: image numbers are ASCII digits only (``<image١>`` is text, not image 1),
text that is not valid Unicode (a lone surrogate) is refused with its position, and text that
spells a special token (``<image>``, ``</s>``) never becomes that token.
"""

from __future__ import annotations

import re

from .errors import PromptError

_PLACEHOLDER = re.compile(r"<i>|<image([0-9]+)>", re.ASCII)  # \d would also match Arabic-Indic and other digits
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_IMAGE_NUMBER_DIGITS = 6


def check_text(text: str, what: str = "prompt") -> str:
    """``text`` if it is a ``str`` of valid Unicode (lone surrogates, e.g. from a broken file or
    clipboard, cannot be encoded by any tokenizer)."""
    if not isinstance(text, str):
        raise PromptError(f"{what} must be text, got {type(text).__name__}")
    bad = _SURROGATE.search(text)
    if bad:
        raise PromptError(
            f"the {what} is not valid Unicode: a lone surrogate U+{ord(bad.group()):04X} at character "
            f"{bad.start()} (counting from 0). Retype or re-paste that part of the text."
        )
    return text


def split_prompt(prompt: str, num_images: int) -> tuple[list[str], list[int]]:
    """Text segments around the placeholders, and which image each placeholder refers to."""
    check_text(prompt)
    matches = list(_PLACEHOLDER.finditer(prompt))
    for match in matches:
        if match.group(1) is not None and len(match.group(1).lstrip("0")) > MAX_IMAGE_NUMBER_DIGITS:
            raise PromptError(f"the prompt names image {match.group(1)[:20]}... at character {match.start()}: "
                              "no run has that many images; use <image1>, <image2>, ...")
    numbered = [m for m in matches if m.group(1) is not None]
    if numbered and len(numbered) != len(matches):
        raise PromptError(
            "the prompt mixes <i> with numbered placeholders (<image1>, <image2>, ...); use one style: "
            "<i> takes the images in order, <imageN> names image N."
        )
    segments, order, start = [], [], 0
    for match in matches:
        segments.append(prompt[start : match.start()])
        start = match.end()
        order.append(int(match.group(1)) - 1 if match.group(1) is not None else len(order))
    segments.append(prompt[start:])

    if numbered:
        bad = sorted({i + 1 for i in order if not 0 <= i < num_images})
        if bad:
            raise PromptError(
                f"the prompt refers to image(s) {', '.join(f'<image{n}>' for n in bad)} but "
                f"{num_images} image(s) were given (numbering starts at <image1>)."
            )
        unused = sorted(set(range(num_images)) - set(order))
        if unused:
            raise PromptError(
                f"{num_images} image(s) were given but the prompt never uses "
                f"{', '.join(f'<image{i + 1}>' for i in unused)}; reference every image or remove it."
            )
    elif len(order) != num_images:
        raise PromptError(
            f"the prompt has {len(order)} image placeholder(s) (<i>) but {num_images} image(s) were "
            "given; put one <i> where each image belongs, in order."
        )
    return segments, order


def has_placeholder(text: str) -> bool:
    """Whether the text holds an image placeholder (``<i>`` or ``<imageN>``)."""
    return _PLACEHOLDER.search(text) is not None
