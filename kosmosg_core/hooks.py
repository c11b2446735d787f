"""Per-layer callbacks: how callers see progress and stop a long forward pass (e.g. Cancel)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from torch import nn

LayerCallback = Callable[[int, int], None]  # (layers done, layers total)


@contextmanager
def per_layer(layers: list[nn.Module], callback: LayerCallback | None):
    """Call ``callback(done, total)`` before each of ``layers`` runs; raising in it aborts the pass."""
    if callback is None:
        yield
        return
    state = {"done": 0}

    def hook(_module, _args):
        callback(state["done"], len(layers))
        state["done"] += 1

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
