"""argparse value types shared by the command-line parsers: a bad value is refused while the
arguments are parsed, as one line naming the flag, before anything is loaded."""

from __future__ import annotations

import argparse


def device(text: str) -> str:
    """argparse type: a torch device this machine has (``cuda`` without a GPU is refused here, not deep
    inside a load)."""
    if text == "cpu":  # the default: no need to load torch just to parse the arguments
        return text
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (use cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                                         "usable by this torch build; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; use --device cpu")
    return text


def _bounded(convert, what: str, low, high):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:  # also false for NaN
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse


def int_range(low: int, high: int):
    """argparse type: a whole number in ``[low, high]`` (a huge value would allocate without end)."""
    return _bounded(int, "a whole number", low, high)


def finite_float(low: float, high: float):
    """argparse type: a float in ``[low, high]`` (NaN and infinities refused)."""
    return _bounded(float, "a number", low, high)
