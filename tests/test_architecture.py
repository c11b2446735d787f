"""The layout's rules, read from the source with ``ast`` (nothing is imported, so this runs in a
second): no import cycles between kosmosg_core modules (an import inside a function counts: it only
hides a cycle until that function runs), no ``from X import _private`` across packages, no ComfyUI
module imported by the library outside the packages that drive a ComfyUI, and the packages import
one way (docs/architecture.md draws it). Each check is also run on a planted tree, to show it fails."""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("kosmosg_core", "nodes", "training")

# ComfyUI's own top-level modules: the library must import without them.
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server",
                 "execution", "latent_preview", "node_helpers"}
# The packages that run inside a ComfyUI: the embedded host (runner, tiny ComfyUI models) and the GPU
# machine's check, which times ComfyUI itself.
COMFY_ALLOWED = ("kosmosg_core.comfy_host", "kosmosg_core.device_check")

# package -> the kosmosg_core packages it must never import (the direction of the arrows)
NEVER = {
    "kosmosg_core.weights": ("kosmosg_core.kosmosg", "kosmosg_core.gill", "kosmosg_core.evaluation",
                             "kosmosg_core.comfy_host", "kosmosg_core.cli", "kosmosg_core.download",
                             "kosmosg_core.bench", "kosmosg_core.device_check"),
    "kosmosg_core.kosmosg": ("kosmosg_core.gill", "kosmosg_core.evaluation", "kosmosg_core.comfy_host",
                             "kosmosg_core.cli", "kosmosg_core.download", "kosmosg_core.bench",
                             "kosmosg_core.device_check"),
    "kosmosg_core.gill": ("kosmosg_core.kosmosg", "kosmosg_core.evaluation", "kosmosg_core.comfy_host",
                          "kosmosg_core.cli", "kosmosg_core.download", "kosmosg_core.bench",
                          "kosmosg_core.device_check"),
    "kosmosg_core.evaluation": ("kosmosg_core.comfy_host", "kosmosg_core.device_check", "kosmosg_core.cli"),
    "kosmosg_core.comfy_host": ("kosmosg_core.cli", "kosmosg_core.device_check", "kosmosg_core.evaluation"),
}
SHARED = ("kosmosg_core.errors", "kosmosg_core.safe_files", "kosmosg_core.dtypes", "kosmosg_core.image_processing",
          "kosmosg_core.prompt", "kosmosg_core.hooks", "kosmosg_core.model_files")
for _shared in SHARED:  # the shared modules sit under every package
    NEVER[_shared] = ("kosmosg_core.kosmosg", "kosmosg_core.gill", "kosmosg_core.evaluation", "kosmosg_core.comfy_host",
                      "kosmosg_core.cli", "kosmosg_core.download", "kosmosg_core.bench", "kosmosg_core.device_check")


def module_files(root: str, packages=SCANNED) -> dict[str, str]:
    """Dotted module name -> file, for every ``.py`` under the given top-level packages."""
    found = {}
    for top in packages:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in files:
                if name.endswith(".py"):
                    parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = os.path.join(folder, name)
    return found


def imports(module: str, path: str, known: dict[str, str]):
    """Every import in the file, at any depth: ``(line, target module, imported names)``; a target
    ``pkg.name`` that is itself a module is reported as that module."""
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [alias.name for alias in node.names]
            plain = [n for n in names if f"{target}.{n}" not in known]
            for n in names:
                if f"{target}.{n}" in known:
                    yield node.lineno, f"{target}.{n}", []
            if plain:
                yield node.lineno, target, plain


def graph(known: dict[str, str], prefix: str = "kosmosg_core") -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        if module.split(".")[0] != prefix:
            continue
        edges[module] = {target for _, target, _ in imports(module, path, known)
                         if target in known and target != module and target.split(".")[0] == prefix}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def package_of(module: str, known: dict[str, str]) -> str:
    path = known.get(module, "")
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def private_imports(known: dict[str, str]) -> list[str]:
    found = []
    for module, path in known.items():
        for line, target, names in imports(module, path, known):
            if target not in known:
                continue
            for name in names:
                if name.startswith("_") and not name.startswith("__") and \
                        package_of(module, known) != package_of(target, known):
                    found.append(f"{module}:{line} imports {name} from {target}")
    return found


def comfy_imports(known: dict[str, str]) -> list[str]:
    found = []
    for module, path in known.items():
        if module.split(".")[0] != "kosmosg_core" or module.startswith(COMFY_ALLOWED):
            continue
        for line, target, _ in imports(module, path, known):
            if target.split(".")[0] in COMFY_MODULES:
                found.append(f"{module}:{line} imports {target}")
    return found


def wrong_way(known: dict[str, str]) -> list[str]:
    found = []
    for module, path in known.items():
        for owner, forbidden in NEVER.items():
            if module == owner or module.startswith(owner + "."):
                for line, target, _ in imports(module, path, known):
                    if any(target == f or target.startswith(f + ".") for f in forbidden):
                        found.append(f"{module}:{line} imports {target} ({owner} must not)")
    return found


@pytest.fixture(scope="module")
def known():
    return module_files(REPO)


def test_the_scan_sees_the_library(known):
    assert {"kosmosg_core.kosmosg.loading", "kosmosg_core.gill.loading", "kosmosg_core.weights.safe_pickle",
            "kosmosg_core.cli", "kosmosg_core.comfy_host", "nodes.kosmosg", "training.engine"} <= set(known)
    edges = graph(known)
    assert "kosmosg_core.kosmosg.converted_cache" in edges["kosmosg_core.kosmosg.loading"]  # a function-level import


def test_no_import_cycles(known):
    assert cycles(graph(known)) == []


def test_no_private_names_across_packages(known):
    assert private_imports(known) == []


def test_the_library_imports_no_comfyui_outside_the_host(known):
    assert comfy_imports(known) == []


def test_packages_import_one_way(known):
    assert wrong_way(known) == []


def _plant(root, files: dict[str, str]) -> dict[str, str]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(str(root))


def test_the_checks_fail_on_a_planted_tree(tmp_path):
    """A cycle hidden behind a function-level import, a private name borrowed across packages, ComfyUI
    imported by the library, an import the wrong way: each is found."""
    known = _plant(tmp_path, {
        "kosmosg_core/__init__.py": "",
        "kosmosg_core/errors.py": "",
        "kosmosg_core/weights/__init__.py": "",
        "kosmosg_core/weights/io.py": "def f():\n    from ..kosmosg import loading\n",
        "kosmosg_core/kosmosg/__init__.py": "",
        "kosmosg_core/kosmosg/loading.py": "from .convert import write\ndef _helper(): pass\n",
        "kosmosg_core/kosmosg/convert.py": "def write():\n    from .loading import _helper\n",
        "kosmosg_core/gill/__init__.py": "",
        "kosmosg_core/gill/checkpoint.py": "from ..kosmosg.loading import _helper\nimport folder_paths\n",
        "kosmosg_core/comfy_host/__init__.py": "import comfy.ops\n",
        "nodes/__init__.py": "",
        "training/__init__.py": "",
    })
    assert cycles(graph(known)) == [["kosmosg_core.kosmosg.convert", "kosmosg_core.kosmosg.loading"]]
    assert private_imports(known) == [
        "kosmosg_core.gill.checkpoint:1 imports _helper from kosmosg_core.kosmosg.loading"]
    assert comfy_imports(known) == ["kosmosg_core.gill.checkpoint:2 imports folder_paths"]  # the host may
    problems = wrong_way(known)
    assert "kosmosg_core.weights.io:2 imports kosmosg_core.kosmosg.loading (kosmosg_core.weights must not)" in problems
    assert ("kosmosg_core.gill.checkpoint:1 imports kosmosg_core.kosmosg.loading (kosmosg_core.gill must not)"
            in problems)
