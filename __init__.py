"""ComfyUI entry point of ComfyUI-KosmosG.

The node classes need ComfyUI; outside it (pip install, the CLI, training) this file stays
importable and registers nothing.
"""

try:
    import folder_paths  # noqa: F401  (present only inside a running ComfyUI)
except ImportError:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
