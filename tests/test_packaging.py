"""What ComfyUI-Manager and the Comfy Registry get: metadata, requirements, the published archive.

The archive is built by the real comfy-cli (`comfy node pack` zips git-tracked files minus
`.comfyignore`), then unpacked alone and run: the pack must import and run a workflow without
tests/, training/ or scripts/ next to it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from support import REPO

BIN = Path(sys.executable).parent
PUBLISHED_ROOTS = {"__init__.py", "nodes", "kosmosg_core", "workflows", "README.md", "LICENSE", "pyproject.toml",
                   "requirements.txt", ".comfyignore", ".gitignore"}


def requirement_lines() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def clean_env(tmp_path: Path) -> dict:
    """No PYTHONPATH (the published copy must stand alone) and a scratch HOME for comfy-cli's config."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HOME"] = str(tmp_path / "home")
    return env


def test_requirements_are_manager_safe_and_match_pyproject():
    lines = requirement_lines()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert lines == project["dependencies"]
    for line in lines:
        name, _, bound = line.partition(">=")
        assert bound and not any(op in bound for op in "<=~!,;"), f"lower bounds only: {line}"
        assert name.lower() not in {"torch", "torchvision", "torchaudio", "torchsde"}, line


def test_manager_install_changes_nothing_in_a_comfyui_environment():
    """Manager runs `pip install <line>` per line; in ComfyUI's own environment none may (re)install."""
    for line in requirement_lines():
        done = subprocess.run([str(BIN / "python"), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                               "--disable-pip-version-check", line], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["install"] == [], f"{line} would change the ComfyUI environment"


def test_registry_metadata_as_comfyui_reads_it(comfy):
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(REPO))
    assert config.project.name == "kosmos-g" and "ComfyUI" not in config.project.name
    assert config.project.supported_comfyui_version == ">=0.3.75"
    assert config.project.urls.repository.startswith("https://github.com/")
    assert (REPO / config.project.license.file).is_file()
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    assert config.project.dependencies == requirement_lines()


def test_comfy_cli_validate_passes(tmp_path):
    done = subprocess.run([str(BIN / "comfy"), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                          cwd=REPO, env=clean_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "validation checks passed" in done.stdout + done.stderr, done.stdout + done.stderr


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """The Registry archive, made by comfy-cli's own packer, unpacked as ComfyUI/custom_nodes/kosmos-g."""
    tmp = tmp_path_factory.mktemp("published")
    archive = tmp / "node.zip"
    code = "import sys; from comfy_cli.file_utils import zip_files; zip_files(sys.argv[1])"
    done = subprocess.run([str(BIN / "python"), "-c", code, str(archive)], cwd=REPO, env=clean_env(tmp),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    target = tmp / "custom_nodes" / "kosmos-g"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(target)
        target.joinpath(".names").write_text("\n".join(zipped.namelist()))
    return target


def test_archive_holds_the_pack_and_nothing_else(published):
    names = published.joinpath(".names").read_text().splitlines()
    assert {name.split("/")[0] for name in names} <= PUBLISHED_ROOTS
    for needed in ("__init__.py", "nodes/kosmosg.py", "nodes/gill.py", "kosmosg_core/cli/__init__.py", "LICENSE",
                   "pyproject.toml", "requirements.txt", "README.md"):
        assert needed in names
    assert {f"workflows/{p.name}" for p in (REPO / "workflows").glob("*.json")} <= set(names)
    too_big = [n for n in names if (published / n).stat().st_size > 1_000_000]
    assert not too_big, too_big
    # tests/data (the 12 MB of official-code fixtures) and the rest of tests/ stay out (.comfyignore)
    assert sum((published / n).stat().st_size for n in names if (published / n).is_file()) < 3_000_000


def test_published_code_imports_nothing_from_tests_or_training(published):
    for path in published.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert module.split(".")[0] not in {"tests", "training", "conftest", "scripts"}, (path, module)


def test_published_copy_runs_a_workflow_on_its_own(published, tmp_path):
    """Only the archive's files: ComfyUI loads the pack from it and runs an example workflow."""
    done = subprocess.run([str(BIN / "python"), "-m", "kosmosg_core", "workflow",
                           "workflows/kosmos-g_multi-entity.json", "--offline-smoke", "--base-dir",
                           str(tmp_path / "base")],
                          cwd=published, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    saved = [line for line in done.stdout.splitlines() if line.startswith("image saved: ")]
    assert saved and os.path.isfile(saved[0].removeprefix("image saved: "))


def test_pip_install_ships_every_subpackage(tmp_path):
    """`pip install .` into an empty environment, then the entry points work from outside the checkout.

    The environment is empty of this project but sees .venv's packages (torch, transformers, ...)
    through a .pth line, so nothing is downloaded: `--no-deps --no-build-isolation`. The source is a
    copy of the checkout's files (what a clone has), so the build writes nothing into the checkout."""
    import shutil
    import sysconfig

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    source = tmp_path / "source"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    base = sysconfig.get_paths()["purelib"]
    Path(own, "_base_environment.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = clean_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q", str(source)],
                          cwd=away, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    installed = {path.name for path in Path(own).iterdir()}
    assert "kosmosg_core" in installed
    assert not installed & {"nodes", "tests", "support", "data", "training", "scripts", "workflows"}
    for command in ([str(venv / "bin" / "kosmosg"), "encode", "--help"],
                    [str(python), "-m", "kosmosg_core", "eval", "--help"],
                    [str(python), "-c", "import kosmosg_core, kosmosg_core.gill, kosmosg_core.comfy_host, "
                                        "kosmosg_core.evaluation; print(kosmosg_core.__file__)"]):
        done = subprocess.run(command, cwd=away, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-4000:])
        assert "Traceback" not in done.stderr, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(own)  # the installed copy, not the checkout
