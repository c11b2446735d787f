"""ComfyUI UI-format workflow JSON -> API prompt, from the nodes' own input definitions.

ComfyUI ships this conversion only in its JavaScript frontend. The UI format stores widget
values positionally (``widgets_values``) and links separately, so we walk each node's
``INPUT_TYPES()`` in order: a linked input becomes ``[source_id, slot]``, a widget input takes
the next widget value. The frontend adds hidden widgets we must skip: the
``control_after_generate`` companion of seed inputs and the ``upload`` button of image pickers.

Workflow files come from strangers, so the shape of everything read here is checked first
(:func:`check_ui_structure`, :func:`check_api_prompt`); a bad file is a :class:`WorkflowError`
naming the node and what is wrong, never a ``KeyError`` from deep inside the conversion.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import KosmosGError

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote"}
MODE_NEVER, MODE_BYPASS = 2, 4
RESAVE = "Open it in ComfyUI and save it again (Save, or Export (API)), or fix the file."


class WorkflowError(KosmosGError, ValueError):
    """The workflow cannot be converted or run (bad shape, unknown node, bad link, unsupported feature)."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _node_key(value, where: str) -> str:
    """Node ids are integers in the UI format (strings in some exports); prompts key them as strings."""
    if _is_int(value) or (isinstance(value, str) and value.strip()):
        return str(value)
    raise WorkflowError(f"{where} has node id {value!r}; node ids are integers. {RESAVE}")


def _links(workflow: dict) -> dict[int, tuple[str, int]]:
    """link id -> (origin node id, origin slot), for the 0.4 (arrays) and 1.0 (objects) schemas."""
    raw = workflow["links"]
    if not isinstance(raw, list):
        raise WorkflowError(f"'links' is {type(raw).__name__}, not a list. {RESAVE}")
    result = {}
    for index, link in enumerate(raw):
        if link is None:  # the frontend leaves holes for deleted links
            continue
        if isinstance(link, dict):
            fields = (link.get("id"), link.get("origin_id"), link.get("origin_slot"))
        elif isinstance(link, list) and len(link) >= 3:
            fields = (link[0], link[1], link[2])
        else:
            raise WorkflowError(f"link #{index} is {link!r:.80}, not a link ([id, origin, slot, target, slot, type] "
                                f"or an object with id/origin_id/origin_slot). {RESAVE}")
        link_id, origin, slot = fields
        if not _is_int(link_id):
            raise WorkflowError(f"link #{index} has id {link_id!r:.40}; link ids are integers. {RESAVE}")
        if not _is_int(slot) or slot < 0:
            raise WorkflowError(f"link {link_id} has output slot {slot!r:.40}; slots are integers from 0. {RESAVE}")
        if link_id in result:
            raise WorkflowError(f"link id {link_id} appears twice in 'links'. {RESAVE}")
        result[link_id] = (_node_key(origin, f"link {link_id}"), slot)
    return result


def _check_node(node, index: int) -> None:
    if not isinstance(node, dict):
        raise WorkflowError(f"node #{index} is {type(node).__name__}, not an object. {RESAVE}")
    if "id" not in node:
        raise WorkflowError(f"node #{index} has no 'id'. {RESAVE}")
    key = _node_key(node["id"], f"node #{index}")
    kind = node.get("type")
    if not isinstance(kind, str) or not kind:
        raise WorkflowError(f"node {key} has no node type ('type' is {kind!r:.40}). {RESAVE}")
    mode = node.get("mode", 0)
    if mode is not None and not _is_int(mode):
        raise WorkflowError(f"node {key} ({kind!r}) has mode {mode!r:.40}; modes are integers. {RESAVE}")
    inputs = node.get("inputs")
    if inputs is not None:
        if not isinstance(inputs, list):
            raise WorkflowError(f"node {key} ({kind!r}): 'inputs' is {type(inputs).__name__}, not a list. {RESAVE}")
        for slot in inputs:
            if not isinstance(slot, dict) or not isinstance(slot.get("name"), str):
                raise WorkflowError(f"node {key} ({kind!r}) has an input {slot!r:.80} without a name. {RESAVE}")
            link = slot.get("link")
            if link is not None and not _is_int(link):
                raise WorkflowError(f"node {key} ({kind!r}) input {slot['name']!r} has link {link!r:.40}; "
                                    f"links are integer ids. {RESAVE}")
    values = node.get("widgets_values")
    if values is not None and not isinstance(values, (list, dict)):
        raise WorkflowError(f"node {key} ({kind!r}): 'widgets_values' is {type(values).__name__}, not a list. {RESAVE}")


def check_ui_structure(workflow) -> tuple[dict[str, dict], dict[int, tuple[str, int]]]:
    """The nodes by id and the links of a UI-format workflow, once their shapes are known to be right.

    Needs no ComfyUI: the runner calls it before booting one, so a broken file fails fast."""
    if not isinstance(workflow, dict) or "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("not a UI-format workflow (expected an object with 'nodes' and 'links'); "
                            "API prompts need no conversion.")
    raw_nodes = workflow["nodes"]
    if not isinstance(raw_nodes, list):
        raise WorkflowError(f"'nodes' is {type(raw_nodes).__name__}, not a list. {RESAVE}")
    links = _links(workflow)
    nodes: dict[str, dict] = {}
    for index, node in enumerate(raw_nodes):
        _check_node(node, index)
        key = str(node["id"])
        if key in nodes:
            raise WorkflowError(f"node id {key} is used by two nodes. {RESAVE}")
        nodes[key] = node
    for key, node in nodes.items():
        for slot in node.get("inputs") or []:
            link = slot.get("link")
            if link is None:
                continue
            if link not in links:
                raise WorkflowError(f"node {key} ({node['type']!r}) input {slot['name']!r} uses link {link}, which is "
                                    "not in 'links' (a dangling link). "
                                    "Reconnect that input in ComfyUI and save again.")
            origin = links[link][0]
            if origin not in nodes:
                raise WorkflowError(f"node {key} ({node['type']!r}) input {slot['name']!r} is linked to node {origin}, "
                                    "which is not in the workflow. Reconnect that input in ComfyUI and save again.")
    return nodes, links


def check_api_prompt(prompt) -> dict:
    """An API-format prompt (``{id: {"class_type", "inputs"}}``) whose shape and links are right."""
    if not isinstance(prompt, dict):
        raise WorkflowError(f"the file holds a JSON {type(prompt).__name__}, not a workflow object. "
                            "Save the workflow from ComfyUI (Save, or Export (API)).")
    if not prompt:
        raise WorkflowError("the workflow has no nodes. Save a workflow from ComfyUI (Save, or Export (API)).")
    for key, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
            hint = (" It looks like a /prompt request body: save only its 'prompt' object."
                    if key == "prompt" and isinstance(node, dict) else "")
            raise WorkflowError(f"entry {key!r:.60} is not a node (expected an object with 'class_type' and "
                                f"'inputs'; this is neither a UI nor an API workflow).{hint} {RESAVE}")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise WorkflowError(f"node {key} ({node['class_type']!r}): 'inputs' is {type(inputs).__name__}, "
                                f"not an object. {RESAVE}")
        node.setdefault("inputs", inputs)
        for name, value in inputs.items():
            if not isinstance(value, list):
                continue
            if len(value) != 2 or not isinstance(value[0], str) or not _is_int(value[1]) or value[1] < 0:
                raise WorkflowError(f"node {key} ({node['class_type']!r}) input {name!r} is {value!r:.80}: a list is a "
                                    f"link, [\"node id\", output slot]. {RESAVE}")
            if value[0] not in prompt:
                raise WorkflowError(f"node {key} ({node['class_type']!r}) input {name!r} is linked to node "
                                    f"{value[0]!r:.40}, which is not in the workflow (a dangling link). {RESAVE}")
    return prompt


def check_output_slots(prompt: dict, node_classes: Mapping[str, type]) -> None:
    """Every link points at an output its source node has (ComfyUI would index past its outputs)."""
    for key, node in prompt.items():
        for name, value in node["inputs"].items():
            if not isinstance(value, list):
                continue
            source = prompt[value[0]]["class_type"]
            outputs = getattr(node_classes.get(source), "RETURN_TYPES", None)
            if outputs is not None and value[1] >= len(outputs):
                raise WorkflowError(f"node {key} ({node['class_type']!r}) input {name!r} "
                                    f"uses output {value[1]} of node "
                                    f"{value[0]} ({source!r}), which has {len(outputs)} output(s). {RESAVE}")


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


def _subgraph_ids(workflow: dict) -> set:
    definitions = workflow.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    if not isinstance(subgraphs, list):
        return set()
    return {graph.get("id") for graph in subgraphs if isinstance(graph, dict)}


def ui_to_api(workflow: dict, node_classes: Mapping[str, type], display_names: Mapping[str, str] | None = None) -> dict:
    """Convert a UI-format workflow; ``node_classes`` is ComfyUI's ``NODE_CLASS_MAPPINGS``.

    ``display_names`` (``NODE_DISPLAY_NAME_MAPPINGS``) gives untitled nodes the ``_meta.title``
    the frontend would send, so both conversions agree to the byte."""
    display_names = display_names or {}
    nodes, links = check_ui_structure(workflow)

    def skipped(key: str) -> bool:
        node = nodes[key]
        return node["type"] in FRONTEND_ONLY_NODES or (node.get("mode") or 0) == MODE_NEVER

    def source(node_key: str, input_name: str, link_id: int) -> list:
        origin, slot = links[link_id]
        seen = set()
        while nodes[origin]["type"] == "Reroute":  # follow reroutes back to the real output
            if origin in seen:
                raise WorkflowError(f"reroute loop at node {origin}. Remove the loop in ComfyUI and save again.")
            seen.add(origin)
            reroute_inputs = nodes[origin].get("inputs") or []
            upstream = reroute_inputs[0].get("link") if reroute_inputs else None
            if upstream is None:
                raise WorkflowError(f"reroute node {origin} has no input. Connect it in ComfyUI and save again.")
            origin, slot = links[upstream]
        if skipped(origin):
            raise WorkflowError(f"node {node_key} input {input_name!r} is linked to node {origin} "
                                f"({nodes[origin]['type']!r}), which is muted or a note. "
                                "Unmute it or reconnect the input.")
        return [origin, slot]

    subgraphs = _subgraph_ids(workflow)
    prompt = {}
    for key, node in nodes.items():
        kind = node["type"]
        if kind == "Reroute" or skipped(key):
            continue
        if (node.get("mode") or 0) == MODE_BYPASS:
            raise WorkflowError(f"node {key} ({kind}) is bypassed; un-bypass or delete it before running headless.")
        if kind not in node_classes:
            if kind in subgraphs:
                raise WorkflowError(f"node {key} is a subgraph; headless runs need plain nodes. "
                                    "In ComfyUI, right-click "
                                    "it, unpack the subgraph (convert to nodes) and save again.")
            raise WorkflowError(f"node {key} uses node type {kind!r:.100}, which is not installed in this ComfyUI. "
                                "Install the custom node pack that provides it, or delete the node.")
        linked = {i["name"]: i["link"] for i in node.get("inputs") or [] if i.get("link") is not None}
        values = node.get("widgets_values")
        values = [] if values is None else values
        by_name = values if isinstance(values, dict) else None
        position = 0
        inputs = {}
        definitions = node_classes[kind].INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in (definitions.get(section) or {}).items():
                spec = spec if isinstance(spec, (list, tuple)) else (spec,)
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                widget = _is_widget(spec)
                value = None
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
                if isinstance(value, list):  # the API format reads any list as a link
                    raise WorkflowError(f"node {key} ({kind}) widget {name!r} holds the list {value!r:.80}; widget "
                                        f"values are numbers, text or booleans. {RESAVE}")
                if widget and value is None:  # saved before this widget existed: the frontend fills its default
                    value = _default(spec, options)
                if name in linked:
                    inputs[name] = source(key, name, linked[name])
                elif widget and value is not None:
                    inputs[name] = value
        if by_name is None and position < len(values):
            raise WorkflowError(
                f"node {key} ({kind}) has {len(values)} widget values but {kind} here takes {position}: the workflow "
                "was saved with another version of this node, or edited. Update the node pack (or open the workflow "
                "in ComfyUI, check the node's settings and save again).")
        title = node.get("title")
        title = title if isinstance(title, str) and title else display_names.get(kind, kind)
        prompt[key] = {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}
    return prompt
