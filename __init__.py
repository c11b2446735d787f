"""ComfyUI entry point of ComfyUI-KosmosG: the V3 ``comfy_entrypoint`` (ComfyUI >= 0.3.75 tested).

No ``NODE_CLASS_MAPPINGS`` here: ComfyUI loads a module that has one as V1 and never calls its
``comfy_entrypoint``. The node classes need ComfyUI; outside it (pip install, the CLI, training)
this file stays importable and registers nothing.
"""

try:
    import folder_paths  # noqa: F401  (present only inside a running ComfyUI)
except ImportError:
    __all__: list = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
