"""The README is run, not just read: every ``bash`` and ``python`` block executes as written.

A sandbox stands in for the user's folder: the checkout's files (linked), the user's own images,
an empty ``ComfyUI/custom_nodes``, and the fake web of the download tests behind
``KOSMOSG_DOWNLOAD_MIRROR``. The one rewrite: the ``git clone`` URL points at this checkout.
Downloads fetch the stand-in files; the later blocks then run on tiny models under the real
names. ``bash scripts/run.sh test`` is not re-entered here: it is what ``.ci/run`` runs.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from support import REPO
from support.download_server import serve_models

README = (REPO / "README.md").read_text()
REPOSITORY_URL = "https://github.com/comfyui-kosmosg/ComfyUI-KosmosG"
TEST_COMMAND = "bash scripts/run.sh test"
CHECKOUT_ENTRIES = ("scripts", "workflows", "kosmosg_core", "nodes", "training", "__init__.py", "README.md",
                    "requirements.txt", "requirements-test.txt", "pyproject.toml")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def bash_blocks() -> list[str]:
    return [body for lang, body in fenced_blocks(README) if lang == "bash"]


def write_user_files(sandbox: Path) -> None:
    """What the README calls the user's own: two images and a folder of captioned pictures."""
    rng = np.random.default_rng(7)
    for name in ("dog.png", "hat.png"):
        Image.fromarray(rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(sandbox / name)
    pictures = sandbox / "my_pictures"
    pictures.mkdir()
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(pictures / f"p{index}.png")
        (pictures / f"p{index}.txt").write_text(f"a photo of thing number {index}")
    (sandbox / "ComfyUI" / "custom_nodes").mkdir(parents=True)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    for name in CHECKOUT_ENTRIES:
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    write_user_files(root)
    with serve_models() as web:
        yield SimpleNamespace(path=root, web=web)


def run_block(sandbox, body: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KOSMOSG_VENV")}
    env["PATH"] = f"{sandbox.path / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env["KOSMOSG_DOWNLOAD_MIRROR"] = sandbox.web.url
    script = "set -euo pipefail\n" + body.replace(REPOSITORY_URL, f"{REPO} {REPOSITORY_URL.rsplit('/', 1)[1]}")
    return subprocess.run(["bash", "-c", script], cwd=sandbox.path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_ran(done: subprocess.CompletedProcess, body: str) -> None:
    assert done.returncode == 0, (f"README block failed:\n{body}\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


def test_quick_start_is_the_two_commands_ci_runs():
    first = bash_blocks()[0].strip().splitlines()
    assert first == ["bash scripts/run.sh workflow workflows/kosmos-g_multi-entity.json", TEST_COMMAND]
    assert "bash scripts/run.sh test" in (REPO / ".ci" / "run").read_text()


def test_every_block_runs(sandbox, comfy):
    blocks = bash_blocks()
    quick_start = blocks[0].replace(TEST_COMMAND, "")

    done = run_block(sandbox, quick_start)  # no weights yet: the main job lists what goes where
    assert done.returncode == 2 and "checkpoint_final.pt: put it in" in done.stderr, done.stderr[-2000:]

    install = next(b for b in blocks if "git clone" in b)
    assert_ran(run_block(sandbox, install), install)
    models = sandbox.path / "ComfyUI" / "models"
    served = sandbox.web.models["kosmos-g"]["kosmos_g/checkpoint_final.pt"]
    assert (models / "kosmos_g" / "checkpoint_final.pt").read_bytes() == served
    assert (models / "checkpoints" / "v1-5-pruned-emaonly.safetensors").is_file()

    convert = next(b for b in blocks if " convert " in b)
    assert_ran(run_block(sandbox, convert), convert)
    assert (sandbox.path / "comfy_home" / "models" / "kosmos_g" / "kosmos-g.safetensors").stat().st_size > 0

    # From here on the files under the real names are tiny working models (the downloads above
    # were the fake web's stand-ins, which no U-Net could use).
    shutil.copytree(comfy.folder_paths.models_dir, sandbox.path / "comfy_home" / "models", dirs_exist_ok=True)
    rest = [b for b in blocks[1:] if b not in (install, convert)]
    assert rest, "the README lost its CLI and training blocks"
    for body in rest:
        assert_ran(run_block(sandbox, body), body)
    assert (sandbox.path / "cond.safetensors").is_file()
    assert list((sandbox.path / "runs" / "s1").glob("kosmosg_*.safetensors"))

    inputs = sandbox.path / "comfy_home" / "input"  # the user follows the list: their images go there
    for name in ("dog.png", "hat.png"):
        shutil.copy(sandbox.path / name, inputs / name)
    done = run_block(sandbox, quick_start)  # with weights, the main job makes a picture
    assert_ran(done, quick_start)
    assert "image saved: " in done.stdout


def test_python_blocks_run(sandbox, comfy):
    shutil.copytree(comfy.folder_paths.models_dir, sandbox.path / "comfy_home" / "models", dirs_exist_ok=True)
    blocks = [body for lang, body in fenced_blocks(README) if lang == "python"]
    assert blocks
    for body in blocks:
        done = run_block(sandbox, f".venv/bin/python - <<'PY'\n{body}PY\n")
        assert_ran(done, body)


def test_only_known_block_kinds():
    assert {lang for lang, _ in fenced_blocks(README)} <= {"bash", "python", "text"}


def code_strings() -> str:
    """Every string constant (and the literal parts of f-strings) in the pack's code."""
    pieces = []
    for path in [*(REPO / "kosmosg_core").rglob("*.py"), *(REPO / "nodes").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                pieces.append(node.value)
    return "\n".join(pieces)


def test_troubleshooting_quotes_real_messages():
    section = README.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith('| "')]
    assert len(rows) >= 10
    strings = code_strings()
    for row in rows:
        for quoted in re.findall(r'"([^"]+)"', row.split("|")[1]):
            assert quoted in strings, f"the README quotes an error the code does not raise: {quoted!r}"
