"""ComfyUI UI-format workflow JSON -> API prompt, from the nodes' own input definitions.

ComfyUI ships this conversion only in its JavaScript frontend. The UI format stores widget
values positionally (``widgets_values``) and links separately, so we walk each node's
``INPUT_TYPES()`` in order: a linked input becomes ``[source_id, slot]``, a widget input takes
the next widget value. The frontend adds hidden widgets we must skip: the
``control_after_generate`` companion of seed inputs and the ``upload`` button of image pickers.
"""

from __future__ import annotations

from collections.abc import Mapping

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}
MODE_NEVER, MODE_BYPASS = 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be converted (unknown node, bad link, unsupported feature)."""


def _links(workflow: dict) -> dict[int, tuple[int, int]]:
    """link id -> (origin node id, origin slot), for the 0.4 (arrays) and 1.0 (objects) schemas."""
    result = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            result[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            result[link[0]] = (link[1], link[2])
    return result


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _default(spec, options: dict):
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], (list, tuple)) and spec[0]:
        return spec[0][0]
    return None


def _takes_seed_control(name: str, kind, options: dict) -> bool:
    return kind == "INT" and (name in ("seed", "noise_seed") or bool(options.get("control_after_generate")))


def ui_to_api(workflow: dict, node_classes: Mapping[str, type], display_names: Mapping[str, str] | None = None) -> dict:
    """Convert a UI-format workflow; ``node_classes`` is ComfyUI's ``NODE_CLASS_MAPPINGS``.

    ``display_names`` (``NODE_DISPLAY_NAME_MAPPINGS``) gives untitled nodes the ``_meta.title``
    the frontend would send, so both conversions agree to the byte."""
    display_names = display_names or {}
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("not a UI-format workflow (expected 'nodes' and 'links'); API prompts need no conversion.")
    links = _links(workflow)
    nodes = {node["id"]: node for node in workflow["nodes"]}

    def source(link_id: int) -> list:
        origin, slot = links[link_id]
        seen = set()
        while nodes[origin]["type"] == "Reroute":  # follow reroutes back to the real output
            if origin in seen:
                raise WorkflowError(f"reroute loop at node {origin}")
            seen.add(origin)
            upstream = nodes[origin]["inputs"][0].get("link")
            if upstream is None:
                raise WorkflowError(f"reroute node {origin} has no input")
            origin, slot = links[upstream]
        return [str(origin), slot]

    prompt = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY_NODES or kind == "Reroute" or node.get("mode", 0) == MODE_NEVER:
            continue
        if node.get("mode", 0) == MODE_BYPASS:
            raise WorkflowError(f"node {node['id']} ({kind}) is bypassed; un-bypass or delete it before running headless.")
        if kind not in node_classes:
            raise WorkflowError(f"node {node['id']} uses node type {kind!r}, which is not installed in this ComfyUI.")
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        by_name = values if isinstance(values, dict) else None
        position = 0
        inputs = {}
        definitions = node_classes[kind].INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in definitions.get(section, {}).items():
                spec = spec if isinstance(spec, (list, tuple)) else (spec,)
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                widget = _is_widget(spec)
                if widget and by_name is None:
                    value = values[position] if position < len(values) else None
                    position += 1
                    if _takes_seed_control(name, spec[0], options) and position < len(values) \
                            and values[position] in SEED_CONTROL_VALUES:
                        position += 1
                    if options.get("image_upload") and position < len(values) and values[position] in ("image", None):
                        position += 1
                elif widget:
                    value = by_name.get(name)
                if widget and value is None:  # saved before this widget existed: the frontend fills its default
                    value = _default(spec, options)
                if name in linked:
                    inputs[name] = source(linked[name])
                elif widget and value is not None:
                    inputs[name] = value
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title") or display_names.get(kind, kind)}}
    return prompt
