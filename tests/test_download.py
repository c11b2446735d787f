"""``download``: every source served by the fake web (tests/support/download_server.py) through --mirror.

The full downloads run the CLI as users do (a subprocess); the other cases call the same
``main`` in-process, because each subprocess spends two seconds importing torch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO
from support.download_server import closed_port_url, serve_models

from kosmosg_core.cli import main
from kosmosg_core.download import (
    KOSMOSG_CHECKPOINT,
    MIRROR_ENV,
    Expected,
    Planned,
    default_models_dir,
    fetch,
    mirrored,
    wanted_files,
)
from kosmosg_core.errors import DownloadError

CHECKPOINT = "kosmos_g/checkpoint_final.pt"
SD15 = "checkpoints/v1-5-pruned-emaonly.safetensors"


@pytest.fixture
def web():
    with serve_models() as served:
        yield served


def run_here(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m kosmosg_core download ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["download", *args])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def partial_of(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    """Exit 2, no traceback, and the last stderr line is the ``error: ...`` naming ``words``."""
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and line.startswith("error: "), err
    for word in words:
        assert word in line, (word, line)
    return line


NO_PROXY = {"no_proxy": "127.0.0.1"}  # the fake web is local even where a proxy is configured
NO_PAUSE = {"KOSMOSG_DOWNLOAD_RETRY_PAUSE": "0"}  # retries of the fake web need no back-off


@pytest.fixture(autouse=True)
def local_without_proxy(monkeypatch):
    for name, value in {**NO_PROXY, **NO_PAUSE}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, dict[str, bytes]]]:
    """The three full downloads, run as users run them and side by side (each costs 2 s of start-up);
    sd15 takes its mirror from the environment."""
    with serve_models() as served:
        started = {}
        for model in ("kosmos-g", "gill", "sd15"):
            dest = tmp_path_factory.mktemp(model)
            mirror = [] if model == "sd15" else ["--mirror", served.url]
            command = [sys.executable, "-m", "kosmosg_core", "download", model, "--dest", str(dest), *mirror]
            started[model] = dest, subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    text=True, env={**os.environ, **NO_PROXY, MIRROR_ENV: served.url})
        finished = {}
        for model, (dest, process) in started.items():
            out, err = process.communicate()
            done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
            finished[model] = dest, done, served.models[model]
    return finished


def test_download_kosmos_g_then_load(downloaded):
    from kosmosg_core import load_kosmosg

    dest, done, expected = downloaded["kosmos-g"]
    assert done.returncode == 0, done.stderr
    assert files_under(dest) == expected
    assert f"into {dest}" in done.stdout and "licence: MIT" in done.stdout
    assert done.stdout.count("downloaded: ") == 3 and "md5 (Content-MD5)" in done.stdout
    encoder = load_kosmosg(dest / CHECKPOINT)
    assert encoder.encode("a dog", []).cond.shape[1] == 77  # SD conditioning length


def test_download_gill_then_load(downloaded):
    from kosmosg_core.gill import load_gill

    dest, done, expected = downloaded["gill"]
    assert done.returncode == 0, done.stderr
    assert files_under(dest) == expected  # no TF/Flax/.bin/ONNX decoys, no leftovers
    assert "OPT-175B licence agreement" in done.stdout and "sha256 (hub listing)" in done.stdout
    gill = dest / "gill"
    load_gill(str(gill / "gill_opt"), str(gill / "opt-6.7b"), str(gill / "clip-vit-large-patch14"))


def test_download_sd15_only_the_checkpoint_mirror_from_env(downloaded):
    dest, done, expected = downloaded["sd15"]
    assert done.returncode == 0, done.stderr
    assert files_under(dest) == expected and list(expected) == [SD15]
    assert "CreativeML OpenRAIL-M" in done.stdout


@pytest.mark.parametrize("model, label", [("kosmos-g", CHECKPOINT), ("sd15", SD15)],
                         ids=["azure-md5", "hub-lfs-sha256"])
def test_interrupted_download_resumes_with_range(web, tmp_path, capsys, monkeypatch, model, label):
    """One try (no automatic retry): the next run resumes where the first stopped."""
    monkeypatch.setenv("KOSMOSG_DOWNLOAD_ATTEMPTS", "1")
    body, path = web.models[model][label], web.paths[label]
    cut = len(body) // 3
    web.cut[path] = cut
    code, _, err = run_here(capsys, model, "--dest", str(tmp_path), "--mirror", web.url)
    assert_one_line_error(code, err, f"stopped after {cut} of {len(body)} bytes", "is kept", "run the command again")
    final = tmp_path / label
    assert not final.exists() and partial_of(final).read_bytes() == body[:cut]

    web.cut.clear()
    served_before = web.bytes_served(path)
    code, out, err = run_here(capsys, model, "--dest", str(tmp_path), "--mirror", web.url)
    assert code == 0, err
    resumed = web.requests(path)[-1]
    assert resumed.headers["range"] == f"bytes={cut}-" and resumed.headers["if-range"] == web.files[path].etag
    assert resumed.status == 206 and web.bytes_served(path) - served_before == len(body) - cut
    assert final.read_bytes() == body and not partial_of(final).exists()
    assert f"downloaded: {label}" in out


def test_partial_of_another_version_starts_over(web, tmp_path, capsys):
    final = tmp_path / CHECKPOINT
    final.parent.mkdir(parents=True)
    partial_of(final).write_bytes(b"old version" * 100)
    Path(f"{partial_of(final)}.etag").write_text('"old-etag"')
    code, _, err = run_here(capsys, "kosmos-g", "--dest", str(tmp_path), "--mirror", web.url)
    assert code == 0, err
    answer = web.requests(web.paths[CHECKPOINT])[-1]
    assert answer.headers["if-range"] == '"old-etag"' and answer.status == 200
    assert final.read_bytes() == web.models["kosmos-g"][CHECKPOINT]


@pytest.mark.parametrize("model, label, size, said_by", [
    ("sd15", SD15, None, "sha256 .* \\(hub listing\\)"),
    ("kosmos-g", CHECKPOINT, None, "md5 .* \\(Content-MD5\\)"),
    ("gill", "gill/opt-6.7b/config.json", 1000, "expected 673 bytes \\(hub listing\\), got 1000"),
], ids=["sha256-from-hub", "md5-from-azure", "size-only"])
def test_corrupt_body_is_caught_and_deleted(web, tmp_path, capsys, model, label, size, said_by):
    web.corrupt(web.paths[label], size)
    code, _, err = run_here(capsys, model, "--dest", str(tmp_path), "--mirror", web.url)
    line = assert_one_line_error(code, err, label, "expected", "got", "run the command again")
    assert re.search(said_by, line), line
    final = tmp_path / label
    assert not final.exists() and not partial_of(final).exists()


@pytest.mark.parametrize("model", ["kosmos-g", "sd15"])
def test_good_existing_files_are_not_downloaded_again(web, tmp_path, capsys, model):
    assert run_here(capsys, model, "--dest", str(tmp_path), "--mirror", web.url)[0] == 0
    web.log.clear()
    code, out, _ = run_here(capsys, model, "--dest", str(tmp_path), "--mirror", web.url)
    assert code == 0 and out.count("already there: ") == len(web.models[model])
    assert all(entry.body_bytes == 0 for entry in web.log if "/api/models/" not in entry.path)
    assert files_under(tmp_path) == web.models[model]


@pytest.mark.parametrize("wrong", [b"too short", b"\0" * 300_000], ids=["wrong-size", "same-size-wrong-sha256"])
def test_bad_existing_file_is_replaced(web, tmp_path, capsys, wrong):
    final = tmp_path / SD15
    final.parent.mkdir(parents=True)
    final.write_bytes(wrong)
    code, out, err = run_here(capsys, "sd15", "--dest", str(tmp_path), "--mirror", web.url)
    assert code == 0 and "downloading it again" in err and f"downloaded: {SD15}" in out
    assert final.read_bytes() == web.models["sd15"][SD15]


def test_unreachable_mirror_says_offline(tmp_path, capsys):
    mirror = closed_port_url()
    code, _, err = run_here(capsys, "kosmos-g", "--dest", str(tmp_path), "--mirror", mirror)
    assert_one_line_error(code, err, f"cannot reach {mirror.removeprefix('http://')}",
                          "offline or behind a proxy", f"download {KOSMOSG_CHECKPOINT}", str(tmp_path / CHECKPOINT))
    assert not (tmp_path / CHECKPOINT).exists()


def test_offline_keeps_the_partial_file(tmp_path, capsys):
    partial = partial_of(tmp_path / "gill/gill_opt/model_args.json")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b'{"half')
    code, _, err = run_here(capsys, "gill", "--dest", str(tmp_path), "--mirror", closed_port_url())
    assert_one_line_error(code, err, "cannot reach", f"The partial file {partial} is kept")
    assert partial.read_bytes() == b'{"half'
    assert files_under(tmp_path) == {"gill/gill_opt/model_args.json.partial": b'{"half'}


def test_http_404_names_the_url(web, tmp_path, capsys):
    missing = web.paths["gill/gill_opt/decision_model.pth.tar"]
    del web.files[missing]
    code, _, err = run_here(capsys, "gill", "--dest", str(tmp_path), "--mirror", web.url)
    assert_one_line_error(code, err, f"{web.url}{missing} answered HTTP 404")
    assert not (tmp_path / "gill/gill_opt/decision_model.pth.tar").exists()


def test_sha256_from_x_linked_etag_on_the_redirect(web, tmp_path):
    """Without a hub listing, Hugging Face's redirect still states the sha256 of an LFS file."""
    url = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"
    item = Planned(url, str(tmp_path / "sd.safetensors"), "sd.safetensors", Expected())
    web.corrupt(web.paths[SD15])
    with pytest.raises(DownloadError, match="expected sha256 .* \\(X-Linked-Etag\\)"):
        fetch(item, web.url)
    web.files[web.paths[SD15]].sent = None
    assert "sha256 (X-Linked-Etag)" in fetch(item, web.url)
    assert Path(item.path).read_bytes() == web.models["sd15"][SD15]


def test_hub_file_choice():
    decoys = ["tf_model.h5", "flax_model.msgpack", "onnx/model.onnx", "README.md", ".gitattributes",
              "tf_model.h5.index.json"]
    assert wanted_files(["config.json", "merges.txt", "model.safetensors", "pytorch_model.bin",
                         "pytorch_model.bin.index.json", *decoys]) == ["config.json", "merges.txt", "model.safetensors"]
    shards = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    assert wanted_files(["config.json", *shards, "pytorch_model.bin.index.json", *decoys]) == [
        "config.json", *shards, "pytorch_model.bin.index.json"]
    assert wanted_files(["model-00001-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]) == [
        "model-00001-of-00002.safetensors", "model.safetensors.index.json"]


def test_mirror_mapping_and_default_folder(monkeypatch):
    assert mirrored(KOSMOSG_CHECKPOINT, "http://mirror:8080/") == (
        "http://mirror:8080/conversationhub.blob.core.windows.net/beit-share-public/kosmosg/checkpoint_final.pt?"
        + KOSMOSG_CHECKPOINT.partition("?")[2])
    assert default_models_dir() == str(REPO / "comfy_home" / "models")
    monkeypatch.setattr("kosmosg_core.model_files.PACK_DIR", "/opt/ComfyUI/custom_nodes/ComfyUI-KosmosG")
    assert default_models_dir() == "/opt/ComfyUI/models"


@pytest.mark.parametrize("mirror", ["notaurl", "ftp://example.org"])
def test_malformed_mirror_is_named(tmp_path, capsys, mirror):
    code, _, err = run_here(capsys, "sd15", "--dest", str(tmp_path), "--mirror", mirror)
    assert_one_line_error(code, err, "http:// or https://", repr(mirror))


def test_unwritable_destination_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_here(capsys, "sd15", "--dest", str(blocker / "models"), "--mirror", closed_port_url())
    assert_one_line_error(code, err, "cannot create the models folder", str(blocker / "models"), "--dest")
