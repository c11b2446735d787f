"""Node classes (ComfyUI's V3 schema), one file per model family; this package is the only code importing ComfyUI.

The library is imported once per process under its own name, ``kosmosg_core``, whichever way the
process reached it first (ComfyUI loading this pack, the ``workflow`` runner, tests): the nodes
import it absolutely, never as ``<pack>.kosmosg_core``, so there is one ``KosmosGError`` class
and ``except KosmosGError`` catches what the nodes raise. When no ``kosmosg_core`` is imported
yet, the pack's own copy is loaded under that name (no ``sys.path`` change, so the pack's
``nodes`` folder never shadows ComfyUI's ``nodes`` module).
"""

import importlib.util
import logging
import os
import sys

from comfy_api.v0_0_2 import ComfyExtension

LIBRARY = "kosmosg_core"


def _library():
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), LIBRARY)
    module = sys.modules.get(LIBRARY)
    if module is None:
        spec = importlib.util.spec_from_file_location(LIBRARY, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[LIBRARY] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(LIBRARY, None)
            raise
    elif os.path.realpath(os.path.dirname(getattr(module, "__file__", "") or "")) != os.path.realpath(folder):
        logging.warning("ComfyUI-KosmosG: using the kosmosg_core already imported from %s, not the pack's own %s",
                        os.path.dirname(module.__file__ or "?"), folder)
    return module


_library()

from . import gill, kosmosg  # noqa: E402  (after the library is in place: the nodes import it)

NODES = [*kosmosg.NODES, *gill.NODES]  # the pack's node list: ComfyUI registers each under its schema's node_id


class KosmosGExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint() -> KosmosGExtension:
    """ComfyUI's V3 entry point (the pack root re-exports it; no NODE_CLASS_MAPPINGS, which would win)."""
    return KosmosGExtension()
