"""Node classes, one file per model family; this package is the only code importing ComfyUI."""

from . import kosmosg

NODE_CLASS_MAPPINGS = {**kosmosg.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**kosmosg.NODE_DISPLAY_NAME_MAPPINGS}
