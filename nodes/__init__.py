"""Node classes, one file per model family; this package is the only code importing ComfyUI."""

from . import gill, kosmosg

NODE_CLASS_MAPPINGS = {**kosmosg.NODE_CLASS_MAPPINGS, **gill.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**kosmosg.NODE_DISPLAY_NAME_MAPPINGS, **gill.NODE_DISPLAY_NAME_MAPPINGS}
