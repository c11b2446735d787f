"""Shared test set-up: the tiers (tests/support/tiers.py), the environment, the session fixtures (tiny generated
checkpoints, the official-format fixtures, the ComfyUI hosts).

Where the fixtures are found (tests/data/fixtures, then ../shared) is in ``support``: a missing
one skips locally, but under ``CI=true`` fails: CI must never go green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import require_fixture
from support.tiers import tiers_of


def pytest_configure(config):
    # Loading an official .pt writes a converted copy beside it (or under ~/.cache); tests that are
    # about that cache turn it back on, the rest must not write next to the fixtures or into $HOME.
    config._kosmosg_cache_env = os.environ.get("KOSMOSG_NO_CONVERT_CACHE")
    os.environ.setdefault("KOSMOSG_NO_CONVERT_CACHE", "1")


def pytest_unconfigure(config):
    previous = getattr(config, "_kosmosg_cache_env", None)
    if previous is None:
        os.environ.pop("KOSMOSG_NO_CONVERT_CACHE", None)
    else:
        os.environ["KOSMOSG_NO_CONVERT_CACHE"] = previous


def pytest_collection_modifyitems(config, items):
    untiered = []
    for item in items:
        tiers = tiers_of(item)
        if not tiers:
            untiered.append(item.nodeid)
        for tier in sorted(tiers):
            item.add_marker(tier)
    if untiered:
        raise pytest.UsageError("tests without a tier (add their file to FILE_TIERS in tests/support/tiers.py): "
                                + ", ".join(untiered[:10]))


def pytest_report_header(config):
    """Which ComfyUI the ComfyUI-facing tests run on (the second host runs in tests/test_hosts.py)."""
    from kosmosg_core.comfy_host.host import ComfyNotFound, comfy_version, find_comfyui

    try:
        root = find_comfyui()
    except ComfyNotFound:
        return "ComfyUI host: none found"
    return f"ComfyUI host: {comfy_version(root)} at {root}"


@pytest.fixture(scope="session")
def official_fixture() -> Path:
    return require_fixture("kosmosg-official-tiny")


@pytest.fixture(scope="session")
def fixture_encoder(official_fixture):
    from kosmosg_core import load_kosmosg

    return load_kosmosg(official_fixture / "checkpoint.pt")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from kosmosg_core.kosmosg.synthetic import dict_lines_for, write_tiny_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    write_tiny_tokenizer(str(directory), dict_lines=dict_lines_for(400))
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A generated checkpoint_final.pt (768-wide output) with its tokenizer beside it."""
    import shutil

    from kosmosg_core.kosmosg.synthetic import tiny_size, write_official_checkpoint

    folder = tmp_path_factory.mktemp("tiny_kosmosg")
    for name in ("sentencepiece.bpe.model", "dict.txt"):
        shutil.copy(tiny_tokenizer_dir / name, folder / name)
    return Path(write_official_checkpoint(str(folder / "checkpoint_final.pt"), tiny_size(400, 768), seed=3))


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """One real ComfyUI (0.3.75 test host, or COMFYUI_PATH) booted in this process, with the pack
    loaded through ComfyUI's own custom-node loader, tiny models and input images in place."""
    from support.comfy_graphs import write_input_images

    from kosmosg_core.comfy_host.host import ComfyHost, find_comfyui
    from kosmosg_core.comfy_host.tiny_models import write_tiny_models

    base = tmp_path_factory.mktemp("comfy_base")
    host = ComfyHost(find_comfyui(), str(base), cpu=True)
    expected = os.environ.get("KOSMOSG_EXPECT_COMFYUI")  # set by tests/test_hosts.py for its tier
    assert not expected or host.version == expected, f"ComfyUI {host.version} at {host.root}, expected {expected}"
    host.tiny_models = write_tiny_models(host.folder_paths.models_dir)
    write_input_images(host.folder_paths.get_input_directory())
    return host


@pytest.fixture(scope="session")
def gill_fixture() -> Path:
    return require_fixture("gill-official-tiny")


@pytest.fixture(scope="session")
def gill(gill_fixture):
    from kosmosg_core.gill import load_gill

    return load_gill(str(gill_fixture), str(gill_fixture / "llm"), str(gill_fixture / "vision"))


@pytest.fixture(scope="session")
def tiny_gill_dirs(tmp_path_factory) -> dict:
    from kosmosg_core.gill.synthetic import write_tiny_gill

    return write_tiny_gill(str(tmp_path_factory.mktemp("tiny_gill")))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, comfy):
    """ComfyUI's real HTTP server (main.py, official frontend) with this pack in custom_nodes."""
    from support.comfy_server import ComfyServer

    server = ComfyServer(tmp_path_factory.mktemp("comfy_server"), comfy.folder_paths.models_dir)
    yield server
    server.stop()
