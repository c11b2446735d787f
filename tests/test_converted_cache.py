"""An official .pt is unpickled once; later loads read the converted copy kept beside it."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import kosmosg_core.kosmosg.checkpoint as checkpoint_module
from kosmosg_core import load_kosmosg
from kosmosg_core.kosmosg.converted_cache import CACHE_FOLDER, CACHE_SUFFIX, DISABLE_ENV


@pytest.fixture
def model_folder(official_fixture, tmp_path, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "kosmos_g"
    folder.mkdir()
    for name in ("checkpoint.pt", "sentencepiece.bpe.model", "dict.txt"):
        shutil.copy(official_fixture / name, folder / name)
    return folder


def cached_files(folder):
    return sorted((folder / CACHE_FOLDER).glob(f"*{CACHE_SUFFIX}"))


def refuse_unpickling(monkeypatch):
    def refuse(path, *args, **kwargs):
        raise AssertionError(f"{path} was unpickled although a converted copy exists")

    monkeypatch.setattr(checkpoint_module, "restricted_torch_load", refuse)


def test_second_load_reads_the_converted_copy(model_folder, monkeypatch):
    first = load_kosmosg(model_folder / "checkpoint.pt").encode("a dog in the snow")
    assert len(cached_files(model_folder)) == 1
    refuse_unpickling(monkeypatch)
    second = load_kosmosg(model_folder / "checkpoint.pt").encode("a dog in the snow")
    assert torch.equal(first.cond, second.cond) and torch.equal(first.uncond, second.uncond)


def test_a_replaced_checkpoint_is_converted_again(model_folder):
    load_kosmosg(model_folder / "checkpoint.pt")
    old = cached_files(model_folder)
    stat = os.stat(model_folder / "checkpoint.pt")
    os.utime(model_folder / "checkpoint.pt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_kosmosg(model_folder / "checkpoint.pt")
    new = cached_files(model_folder)
    assert len(new) == 1 and new != old  # the stale copy is gone


def test_read_only_model_folder_uses_the_user_cache(model_folder, tmp_path):
    if os.geteuid() == 0:
        (model_folder / CACHE_FOLDER).write_text("not a folder")  # root ignores permissions; block it instead
    else:
        model_folder.chmod(0o555)
    try:
        load_kosmosg(model_folder / "checkpoint.pt")
    finally:
        model_folder.chmod(0o755)
    assert list((tmp_path / "home" / ".cache" / "kosmosg").glob(f"*{CACHE_SUFFIX}"))


def test_cache_can_be_turned_off(model_folder, monkeypatch):
    load_kosmosg(model_folder / "checkpoint.pt", cache_converted=False)
    monkeypatch.setenv(DISABLE_ENV, "1")
    load_kosmosg(model_folder / "checkpoint.pt")
    assert not (model_folder / CACHE_FOLDER).exists()


def test_the_loader_dropdown_does_not_list_the_cache(comfy):
    folder = comfy.folder_paths.get_folder_paths("kosmos_g")[0]
    os.makedirs(os.path.join(folder, CACHE_FOLDER), exist_ok=True)
    stray = os.path.join(folder, CACHE_FOLDER, f"checkpoint_final.pt.1-2{CACHE_SUFFIX}")
    open(stray, "wb").close()
    try:
        assert not any(CACHE_SUFFIX in name for name in comfy.folder_paths.get_filename_list("kosmos_g"))
    finally:
        os.remove(stray)


def test_the_cache_holds_the_loaded_dtype(model_folder, monkeypatch):
    load_kosmosg(model_folder / "checkpoint.pt", dtype="bf16")
    (cached,) = cached_files(model_folder)
    assert ".bfloat16" in cached.name
    refuse_unpickling(monkeypatch)
    encoder = load_kosmosg(model_folder / "checkpoint.pt", dtype="bf16")
    assert encoder.dtype == torch.bfloat16
