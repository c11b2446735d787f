"""Kosmos-G: the model (config, modeling, aligner), its tokenizer, the prompt encoder, the official
checkpoint's key layout, loading, conversion to safetensors and the converted cache, and the tiny
random checkpoints the tests use. Imports from kosmosg_core.weights and the shared modules, never
from gill/, evaluation/ or comfy_host/."""
