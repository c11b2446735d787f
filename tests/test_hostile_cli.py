"""The CLI's own rules against hostile input: outputs never inputs, writes temp-then-rename, one
``error:`` line for every bad value (the traceback only with --debug)."""

from __future__ import annotations

import os
import shutil

import pytest

from support.hostile_harness import Canary, assert_clear_error, run_cli

from kosmosg_core.errors import InputFileError, OutputPathError
from kosmosg_core.safe_files import (
    atomic_open,
    atomic_write_text,
    atomic_write_with,
    read_text,
    refuse_existing,
    refuse_input_as_output,
    regular_file,
)


@pytest.fixture()
def release(tmp_path, official_fixture):
    """A copy of the official-format fixture as a user's release folder (checkpoint + tokenizer)."""
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("checkpoint.pt", "sentencepiece.bpe.model", "dict.txt"):
        shutil.copy(official_fixture / name, folder / name)
    shutil.copy(official_fixture / "images" / "noise.png", folder / "dog.png")
    return folder


def _encode(release, out, *extra):
    return run_cli(["encode", "--checkpoint", release / "checkpoint.pt", "--prompt", "<i> on a beach",
                    "--image", release / "dog.png", "--out", out, *extra])


@pytest.mark.parametrize("target", ["checkpoint.pt", "dict.txt", "sentencepiece.bpe.model", "dog.png",
                                    "symlink", "hardlink"])
def test_encode_never_writes_over_an_input(release, tmp_path, target):
    if target == "symlink":
        out = tmp_path / "out.safetensors"
        out.symlink_to(release / "checkpoint.pt")
    elif target == "hardlink":
        out = tmp_path / "out.safetensors"
        os.link(release / "checkpoint.pt", out)
    else:
        out = release / target
    canary = Canary(tmp_path)
    assert_clear_error(_encode(release, out), r"is the input file .*Choose another output path")
    canary.check()


@pytest.mark.parametrize("target", ["src", "dict.txt", "symlink"])
def test_convert_never_writes_over_an_input(release, tmp_path, target):
    src = release / "checkpoint.pt"
    dst = {"src": src, "dict.txt": release / "dict.txt", "symlink": tmp_path / "link.safetensors"}[target]
    if target == "symlink":
        dst.symlink_to(src)
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(["convert", src, dst]), r"is the input file")
    canary.check()


def test_gill_index_import_never_writes_over_its_source(tmp_path):
    source = tmp_path / "cc3m_embeddings_urls.npy"
    source.write_bytes(b"\x80\x04N.")
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(["gill-index", "import", source, "--out", source]), r"is the input file")
    canary.check()


def test_generate_text_out_is_not_the_index(tmp_path):
    index = tmp_path / "index.safetensors"
    index.write_bytes(b"not an index")
    canary = Canary(tmp_path)
    outcome = run_cli(["generate-text", "--checkpoint", tmp_path, "--llm", tmp_path, "--vision", tmp_path,
                       "--index", index, "--prompt", "hi", "--out", index])
    assert_clear_error(outcome, r"--out .* is the input file")
    canary.check()


def test_a_good_encode_writes_only_its_output(release, tmp_path):
    out = tmp_path / "results" / "cond.safetensors"
    canary = Canary(tmp_path)
    outcome = _encode(release, out)
    assert outcome.returncode == 0, outcome.describe()
    assert out.is_file() and out.stat().st_size > 0
    canary.check(allowed=(tmp_path / "results",))
    assert sorted(p.name for p in out.parent.iterdir()) == ["cond.safetensors"], "a temporary file was left"


def test_output_that_is_a_folder_is_one_line(release, tmp_path):
    out = tmp_path / "a_folder"
    out.mkdir()
    canary = Canary(tmp_path)
    assert_clear_error(_encode(release, out), r"is a folder")
    canary.check()


@pytest.mark.parametrize("args,pattern", [
    (["encode", "--dtype", "zz", "--checkpoint", "x", "--prompt", "p", "--out", "o"], r"invalid choice: 'zz'"),
    (["bench", "--size", "abc"], r"--size: invalid choice"),
    (["eval", "dreambench", "--batch-size", "x"], r"--batch-size: .x. is not a whole number"),
    (["nope"], r"invalid choice: 'nope'"),
    (["encode"], r"required"),
    (["generate-text", "--checkpoint", "a", "--llm", "b", "--vision", "c", "--prompt", "p", "--max-new-tokens", "1e9"],
     r"--max-new-tokens: .1e9. is not a whole number"),
])
def test_bad_arguments_are_one_line(args, pattern, tmp_path):
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(args, cwd=tmp_path), pattern)
    canary.check()


def test_debug_shows_the_traceback_and_plain_runs_do_not(tmp_path):
    args = ["encode", "--checkpoint", tmp_path / "missing.pt", "--prompt", "p", "--out", tmp_path / "o.safetensors"]
    assert_clear_error(run_cli(args), r"checkpoint file not found: .*missing\.pt")
    for outcome in (run_cli([*args, "--debug"]), run_cli(args, env={"KOSMOSG_DEBUG": "1"})):
        assert outcome.returncode not in (0, 2) and "Traceback" in outcome.stderr, outcome.describe()
        assert "CheckpointError" in outcome.stderr


def test_fifo_as_checkpoint_does_not_hang(tmp_path):
    fifo = tmp_path / "checkpoint_final.pt"
    os.mkfifo(fifo)
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(["encode", "--checkpoint", fifo, "--prompt", "p", "--out", tmp_path / "o.safetensors"],
                               timeout=120))
    canary.check()


# --- the shared helpers, in process ---------------------------------------------------------------


def test_atomic_open_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_write_with_gives_the_writer_the_extension_and_cleans_up(tmp_path):
    seen = []

    def failing(path):
        seen.append(path)
        open(path, "w").write("partial")
        raise OSError("disk full")

    target = tmp_path / "cond.safetensors"
    with pytest.raises(OSError):
        atomic_write_with(target, failing)
    assert seen[0].endswith(".safetensors") and os.path.dirname(seen[0]) == str(tmp_path)
    assert list(tmp_path.iterdir()) == []
    atomic_write_with(target, lambda path: open(path, "w").write("ok"))
    assert target.read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == ["cond.safetensors"]


def test_regular_file_refuses_what_would_block_or_never_end(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputFileError, match="named pipe"):
        regular_file(tmp_path / "pipe", "image")
    with pytest.raises(InputFileError, match="a device"):
        regular_file("/dev/zero", "image")
    with pytest.raises(InputFileError, match="a folder"):
        regular_file(tmp_path, "image")
    with pytest.raises(InputFileError, match="not found"):
        regular_file(tmp_path / "nope", "image")
    (tmp_path / "big").write_bytes(b"x" * 1001)
    with pytest.raises(InputFileError, match="1,001 bytes, more than the 1,000"):
        regular_file(tmp_path / "big", "image", max_bytes=1000)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputFileError, match=r"not UTF-8 text \(byte 3\)"):
        read_text(tmp_path / "latin1.txt", "dict.txt")


def test_refuse_input_as_output_sees_through_links_and_folders(tmp_path):
    source = tmp_path / "in.pt"
    source.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    os.link(source, tmp_path / "sub" / "hard.pt")
    with pytest.raises(OutputPathError, match="is the input file"):
        refuse_input_as_output(tmp_path / "sub" / ".." / "in.pt", [source])
    with pytest.raises(OutputPathError, match="is the input file"):
        refuse_input_as_output(tmp_path / "sub" / "hard.pt", [source])
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "dict.txt").write_text("a 1")
    with pytest.raises(OutputPathError, match="inside the input folder"):
        refuse_input_as_output(tmp_path / "tok" / "dict.txt", [tmp_path / "tok"])
    refuse_input_as_output(tmp_path / "tok" / "new.safetensors", [tmp_path / "tok", source])  # a new file is fine
    with pytest.raises(OutputPathError, match="already exists.*--overwrite"):
        refuse_existing(source)


@pytest.mark.parametrize("which", ["data", "checkpoint"])
def test_eval_results_never_go_over_an_input(tmp_path, which):
    data, sd = tmp_path / "dataset", tmp_path / "sd"
    data.mkdir(), sd.mkdir()
    checkpoint = tmp_path / "checkpoint_final.pt"
    checkpoint.write_bytes(b"weights")
    out = {"data": data, "checkpoint": checkpoint}[which]
    canary = Canary(tmp_path)
    outcome = run_cli(["eval", "dreambench", "--data", data, "--sd", sd, "--checkpoint", checkpoint, "--out", out])
    assert_clear_error(outcome, r"--out .* is the input file")
    canary.check()


@pytest.mark.parametrize("args,pattern", [
    (["encode", "--device", "cuda:7", "--checkpoint", "x", "--prompt", "p", "--out", "o"], r"--device: 'cuda:7'"),
    (["encode", "--device", "toaster", "--checkpoint", "x", "--prompt", "p", "--out", "o"], r"is not a device"),
    (["generate-text", "--checkpoint", "a", "--llm", "b", "--vision", "c", "--prompt", "p", "--temperature", "nan"],
     r"--temperature: nan is outside"),
    (["generate-text", "--checkpoint", "a", "--llm", "b", "--vision", "c", "--prompt", "p", "--top-p", "1.5"],
     r"--top-p: 1.5 is outside"),
    (["generate-text", "--checkpoint", "a", "--llm", "b", "--vision", "c", "--prompt", "p", "--max-new-tokens", "-1"],
     r"--max-new-tokens: -1 is outside"),
    (["eval", "coco-fid", "--data", "d", "--sd", "s", "--checkpoint", "c", "--out", "o", "--size", "1000000"],
     r"--size: 1000000 is outside"),
    (["eval", "vist", "--data", "d", "--sd", "s", "--checkpoint", "c", "--out", "o", "--batch-size", "0"],
     r"--batch-size: 0 is outside"),
    (["eval", "vist", "--data", "d", "--sd", "s", "--checkpoint", "c", "--out", "o", "--guidance", "inf"],
     r"--guidance: inf is outside"),
    (["workflow", "w.json", "--steps", "-3"], r"--steps: -3 is outside"),
])
def test_out_of_range_values_are_refused_while_parsing(args, pattern, tmp_path):
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(args, cwd=tmp_path), pattern)
    canary.check()
