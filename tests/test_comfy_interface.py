"""The nodes' interface as ComfyUI serves it (``/object_info``) stays what the V1 nodes had.

``data/node_interface_v1.json`` was written from the V1 nodes (before the port to ComfyUI's V3
schema) on the 0.3.75 host with ``python tests/test_comfy_interface.py --write-snapshot`` run
inside that host. Saved workflows depend on all of it: node IDs, input names and order (widget
values are stored by position), socket types, defaults, ranges, optional/required, output names,
types and order. What may differ, and is normalised away before comparing:

- tooltips (the V3 nodes add them; a separate test requires one on every input and output);
- how a dropdown is written: V1 ``(["a", "b"], {...})``, V3 ``("COMBO", {"options": [...],
  "multiselect": false})``; both ComfyUI versions validate and render both forms alike;
- dropdowns listing model files or folders, whose entries depend on what is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).with_name("data") / "node_interface_v1.json"
# dropdowns whose options are the files/folders found under models/<folder> at request time
FOLDER_LISTS = {("KosmosGLoader", "checkpoint"): "kosmos_g", ("GILLLoader", "release"): "gill",
                ("GILLLoader", "llm"): "gill", ("GILLLoader", "vision"): "gill", ("GILLRetrieve", "index"): "gill"}


def object_info(cls, name: str, display_names: dict) -> dict:
    """One node's ``/object_info`` entry, built as both hosts' ``server.py`` builds it."""
    if hasattr(cls, "GET_NODE_INFO_V1"):  # a V3 node: the server serves exactly this
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    outputs = list(cls.RETURN_TYPES)
    return {
        "input": inputs, "input_order": {key: list(value) for key, value in inputs.items()},
        "output": outputs, "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
        "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
        "output_tooltips": list(getattr(cls, "OUTPUT_TOOLTIPS", [None] * len(outputs))),
        "name": name, "display_name": display_names.get(name, name), "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"), "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def _socket(node: str, name: str, spec) -> list:
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    options.pop("tooltip", None)
    if kind == "COMBO":
        kind = options.pop("options")
        if options.get("multiselect") is False:
            del options["multiselect"]
    if (node, name) in FOLDER_LISTS:
        assert isinstance(kind, (list, tuple)), (node, name, kind)
        kind = f"<names found in models/{FOLDER_LISTS[node, name]}>"
    return [name, list(kind) if isinstance(kind, tuple) else kind, options]


def interface(info: dict) -> dict:
    """The parts of an ``/object_info`` entry that saved workflows and links depend on, as JSON data."""
    node = info["name"]
    inputs = {section: [_socket(node, name, info["input"][section][name]) for name in names]
              for section, names in info["input_order"].items() if names}
    found = {
        "display_name": info["display_name"], "category": info["category"], "description": info["description"],
        "inputs": inputs, "outputs": [list(pair) for pair in zip(info["output_name"], info["output"], strict=True)],
        "output_is_list": list(info["output_is_list"]), "output_node": bool(info["output_node"]),
    }
    return json.loads(json.dumps(found))  # tuples become lists, as in the snapshot


def pack_interface(comfy) -> dict:
    classes, names = comfy.node_classes(), comfy.display_names()
    return {name: interface(object_info(classes[name], name, names)) for name in comfy.pack_nodes}


def test_pack_registers_v3_nodes_through_its_entrypoint(comfy):
    """The root module has comfy_entrypoint and no NODE_CLASS_MAPPINGS (ComfyUI would load it as V1
    and never call the entrypoint); every registered node is a V3 io.ComfyNode."""
    import sys

    from comfy_api.v0_0_2 import io

    from kosmosg_core.comfy_host.host import PACK_DIR

    root = next(m for m in list(sys.modules.values())
                if getattr(m, "__file__", None) == os.path.join(PACK_DIR, "__init__.py"))
    assert callable(getattr(root, "comfy_entrypoint", None)) and not hasattr(root, "NODE_CLASS_MAPPINGS")
    classes = comfy.node_classes()
    assert all(issubclass(classes[name], io.ComfyNode) for name in comfy.pack_nodes)
    assert all(classes[name].GET_SCHEMA().node_id == name for name in comfy.pack_nodes)


def test_interface_matches_the_v1_snapshot(comfy):
    expected = json.loads(SNAPSHOT.read_text())
    found = pack_interface(comfy)
    assert sorted(found) == sorted(expected)
    for name in expected:
        assert found[name] == expected[name], name


def test_the_classes_give_what_the_server_serves(comfy):
    """The executor and ``kosmosg_core.comfy_host.workflow`` read INPUT_TYPES/RETURN_TYPES,
    the frontend /object_info."""
    classes = comfy.node_classes()
    for name in comfy.pack_nodes:
        cls, info = classes[name], object_info(classes[name], name, comfy.display_names())
        assert json.loads(json.dumps(cls.INPUT_TYPES())) == json.loads(json.dumps(info["input"])), name
        assert list(cls.RETURN_TYPES) == list(info["output"]), name
        assert list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == list(info["output_name"]), name


def test_every_node_input_and_output_is_described(comfy):
    classes = comfy.node_classes()
    for name in comfy.pack_nodes:
        info = object_info(classes[name], name, comfy.display_names())
        assert info["description"].strip(), name
        for section, names in info["input_order"].items():
            for input_name in names:
                spec = info["input"][section][input_name]
                tooltip = spec[1].get("tooltip") if len(spec) > 1 else None
                assert isinstance(tooltip, str) and tooltip.strip(), f"{name}.{input_name} has no tooltip"
        tooltips = info.get("output_tooltips") or []
        assert len(tooltips) == len(info["output"]), name
        for output_name, tooltip in zip(info["output_name"], tooltips, strict=True):
            assert isinstance(tooltip, str) and tooltip.strip(), f"{name} output {output_name} has no tooltip"


@pytest.mark.parametrize("path", ["/object_info"])
def test_the_http_server_serves_the_same(comfy_server, comfy, path):
    """What the frontend really receives from main.py equals the in-process view above."""
    served = comfy_server.get(path)
    for name in comfy.pack_nodes:
        assert name in served, name
        assert interface(served[name]) == pack_interface(comfy)[name], name


if __name__ == "__main__":  # --write-snapshot: only ever from the V1 nodes, see the module docstring
    import sys
    import tempfile

    from kosmosg_core.comfy_host.host import ComfyHost, find_comfyui

    assert sys.argv[1:] == ["--write-snapshot"], "usage: python tests/test_comfy_interface.py --write-snapshot"
    host = ComfyHost(find_comfyui(), tempfile.mkdtemp(prefix="kosmosg_interface_"), cpu=True)
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(pack_interface(host), indent=1) + "\n")
    print(f"{SNAPSHOT}: {len(host.pack_nodes)} nodes from ComfyUI {host.version}")
