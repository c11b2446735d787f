"""Hostile input against the training scripts and data tools, each case in its own process.

Generators here (nothing copied): tars with crafted members (``../``, absolute, links, devices,
FIFOs, lying sizes), files that are not tars, JSON members that are invalid, not UTF-8 or a list,
samples without caption, JSON or image, PNG headers of decompression bombs; output folders holding
an earlier run or conversion. Every case must end in one ``error:`` line (or a counted warning and a
normal run), write nothing outside its output folder and leave earlier results byte-identical.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import pytest

from support.hostile_harness import Canary, assert_clear_error, run_python
from support.training_assets import CAPTIONS, image, write_kosmosg

REPO = Path(__file__).resolve().parents[1]


# -- generators ------------------------------------------------------------------------------------
def png_bytes(seed: int = 0, size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG declaring ``width`` x ``height`` (a decompression bomb's header) with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)) * rows)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")


def good_sample(key: str, seed: int = 0) -> list[tuple[str, bytes]]:
    return [(f"{key}.json", json.dumps({"kind": "caption", "caption": CAPTIONS[seed % len(CAPTIONS)]}).encode()),
            (f"{key}.target.png", png_bytes(seed))]


def make_tar(path: Path, files: list, good: int = 0) -> Path:
    """A tar of ``files``: (name, bytes) pairs or ready TarInfo objects (links, devices...), plus
    ``good`` well-formed caption samples."""
    entries = list(files)
    for i in range(good):
        entries += good_sample(f"good{i:03d}", i)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, payload = entry
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = 1, 3
    return info


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    return write_kosmosg(str(tmp_path_factory.mktemp("hostile_kosmos") / "kosmos"))


def stage1(init, data, out, *extra, cwd=None):
    return run_python(["-m", "training.stage1_mllm", "--init", str(init), "--data", str(data), "--output-dir", str(out),
                       "--batch-size", "2", "--max-steps", "1", "--warmup-steps", "0", *map(str, extra)],
                       cwd=cwd or REPO)


def convert(*args, cwd=None):
    return run_python(["-m", "training.convert_data", *map(str, args)], cwd=cwd or REPO)


# -- shards: members that are refused --------------------------------------------------------------
HOSTILE_MEMBERS = {
    "dotdot": lambda tmp: [("../escaped.json", b'{"kind": "caption", "caption": "x"}'),
                           ("../escaped.target.png", png_bytes())],
    "absolute": lambda tmp: [(str(tmp / "abs.json"), b'{"kind": "caption", "caption": "x"}'),
                             (str(tmp / "abs.target.png"), png_bytes())],
    "symlink": lambda tmp: [special("s.json", tarfile.SYMTYPE, "/etc/passwd"), ("s.target.png", png_bytes())],
    "hardlink": lambda tmp: [special("h.json", tarfile.LNKTYPE, "/etc/passwd"), ("h.target.png", png_bytes())],
    "chrdev": lambda tmp: [special("c.json", tarfile.CHRTYPE), ("c.target.png", png_bytes())],
    "blockdev": lambda tmp: [special("b.json", tarfile.BLKTYPE), ("b.target.png", png_bytes())],
    "fifo": lambda tmp: [special("f.json", tarfile.FIFOTYPE), ("f.target.png", png_bytes())],
}
MEMBER_REASON = {"dotdot": "'..'", "absolute": "absolute", "symlink": "link", "hardlink": "link", "chrdev": "device",
                 "blockdev": "device", "fifo": "FIFO"}


@pytest.mark.parametrize("case", sorted(HOSTILE_MEMBERS))
def test_hostile_member_alone_is_no_usable_sample(case, init, tmp_path):
    data = tmp_path / "work" / "data"
    make_tar(data / "shard-00000.tar", HOSTILE_MEMBERS[case](tmp_path))
    canary = Canary(tmp_path)
    done = stage1(init, data, tmp_path / "out", cwd=data)  # ../ would land in tmp_path/work
    assert_clear_error(done, "no usable samples")
    assert "warning:" in done.stderr and MEMBER_REASON[case] in done.stderr, done.describe()
    canary.check()
    assert not (tmp_path / "work" / "escaped.json").exists() and not (tmp_path / "out").exists()


def test_lying_member_size_is_counted_not_read(init, tmp_path):
    data = tmp_path / "data"
    path = make_tar(data / "shard-00000.tar", [], good=1)
    blob = bytearray(path.read_bytes())
    info = tarfile.TarInfo("huge.json")
    info.size = 10**11  # 100 GB declared, nothing behind it
    header = info.tobuf(tarfile.GNU_FORMAT)
    with tarfile.open(path) as tar:  # right after the last member's data, before the zero blocks
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    path.write_bytes(bytes(blob[:end]) + header + bytes(1024))
    canary = Canary(tmp_path)
    done = stage1(init, data, tmp_path / "out", "--batch-size", "4")  # 1 good sample < one batch of 4
    assert_clear_error(done, "fewer than one global batch")
    assert "size beyond the end" in done.stderr or "ends early" in done.stderr, done.describe()
    canary.check(allowed=(tmp_path / "out",))


# -- shards that are not tars ----------------------------------------------------------------------
NOT_TARS = {
    "random": lambda: os.urandom(4096),
    "empty": lambda: b"",
    "text": lambda: b"this is not a tar\n" * 100,
    "gzip": lambda: __import__("gzip").compress(b"\0" * 10240),
    "png": lambda: png_bytes(),
}


@pytest.mark.parametrize("case", sorted(NOT_TARS))
def test_a_shard_that_is_not_a_tar_is_one_line_naming_it(case, init, tmp_path):
    data = tmp_path / "data"
    make_tar(data / "shard-00000.tar", [], good=4)
    (data / "shard-00001.tar").write_bytes(NOT_TARS[case]())
    canary = Canary(tmp_path)
    line = assert_clear_error(stage1(init, data, tmp_path / "out"), "shard-00001.tar")
    assert "tar" in line or "damaged" in line
    canary.check()


def test_truncated_shard_keeps_what_is_complete(init, tmp_path):
    data = tmp_path / "data"
    path = make_tar(data / "shard-00000.tar", [], good=3)
    path.write_bytes(path.read_bytes()[:1700])  # the first sample whole, the second cut
    canary = Canary(tmp_path)
    done = stage1(init, data, tmp_path / "out", "--batch-size", "2")
    assert_clear_error(done, "fewer than one global batch|no usable samples")
    assert "warning:" in done.stderr, done.describe()
    canary.check(allowed=(tmp_path / "out",))


@pytest.mark.parametrize("where", ["inside", "direct"])
def test_fifo_as_shard_is_refused_without_waiting(where, init, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "shard-00000.tar")
    canary = Canary(tmp_path)
    done = stage1(init, data if where == "inside" else data / "shard-00000.tar", tmp_path / "out")
    assert_clear_error(done, "FIFO")
    canary.check()


def test_data_folder_without_shards(init, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("x")
    assert_clear_error(stage1(init, tmp_path / "data", tmp_path / "out"), "no .tar shards")


# -- samples that break the layout -----------------------------------------------------------------
BAD_SAMPLES = {
    "json_invalid": ([("a.json", b"{not json"), ("a.target.png", png_bytes())], "JSON not valid"),
    "json_not_utf8": ([("a.json", b'{"kind": "caption", "caption": "\xff\xfe"}'), ("a.target.png", png_bytes())],
                      "not UTF-8"),
    "json_list": ([("a.json", b'["caption", "x"]'), ("a.target.png", png_bytes())], "not an object"),
    "json_deep": ([("a.json", b"[" * 100000 + b"]" * 100000), ("a.target.png", png_bytes())], "JSON"),
    "no_caption": ([("a.json", b'{"kind": "caption"}'), ("a.target.png", png_bytes())], "no caption"),
    "caption_number": ([("a.json", b'{"kind": "caption", "caption": 7}'), ("a.target.png", png_bytes())], "no caption"),
    "caption_surrogate": ([("a.json", b'{"kind": "caption", "caption": "\\ud800"}'), ("a.target.png", png_bytes())],
                          "no caption"),
    "no_json": ([("a.target.png", png_bytes())], "without JSON"),
    "unknown_kind": ([("a.json", b'{"kind": "video", "caption": "x"}'), ("a.target.png", png_bytes())], "unknown kind"),
    "interleaved_missing_image": ([("a.json",
                                    b'{"kind": "interleaved", "segments": [{"text": "a"}, {"image": "img0"}]}')],
                                  "segment image missing"),
    "bomb_header": ([("a.json", b'{"kind": "caption", "caption": "x"}'),
                     ("a.target.png", png_header_only(100_000, 100_000))],
                    "too many pixels"),
    "thin_strip": ([("a.json", b'{"kind": "caption", "caption": "x"}'),
                    ("a.target.png", png_header_only(1, 2_000_000))],
                   "more than 64:1"),
    "not_an_image": ([("a.json", b'{"kind": "caption", "caption": "x"}'), ("a.target.png", b"GIF89a nonsense")],
                     "unreadable image"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_sample_is_skipped_and_counted(case, init, tmp_path):
    files, reason = BAD_SAMPLES[case]
    data = tmp_path / "data"
    make_tar(data / "shard-00000.tar", files)
    canary = Canary(tmp_path)
    done = stage1(init, data, tmp_path / "out")
    assert_clear_error(done, "no usable samples")
    assert reason in done.stderr, done.describe()
    canary.check()


def test_stage3_skips_caption_samples_without_target(tmp_path):
    data = tmp_path / "data"
    make_tar(data / "shard-00000.tar", [("a.json", b'{"kind": "caption", "caption": "a dog"}')])
    done = run_python(["-m", "training.stage3_instruct", "--init", str(tmp_path / "none.pt"), "--sd", str(tmp_path),
                       "--data", str(data), "--output-dir", str(tmp_path / "out")], cwd=REPO)
    assert_clear_error(done, "no usable samples")
    assert "no target image" in done.stderr


def test_mixed_shard_trains_on_the_good_samples_and_an_earlier_run_is_kept(init, tmp_path):
    """Every hostile member at once beside 4 good samples: a normal run with one counted warning;
    then the finished run is refused without --overwrite (byte-identical) and replaced with it."""
    data = tmp_path / "work" / "data"
    hostile = [entry for case in sorted(HOSTILE_MEMBERS) for entry in HOSTILE_MEMBERS[case](tmp_path)]
    bad = [entry for case in ("json_invalid", "no_caption", "bomb_header") for entry in
           [(name.replace("a.", f"{case}."), payload) for name, payload in BAD_SAMPLES[case][0]]]
    make_tar(data / "shard-00000.tar", hostile + bad, good=4)
    out = tmp_path / "out"
    canary = Canary(tmp_path)
    done = stage1(init, data, out, cwd=data)
    assert done.returncode == 0, done.describe()
    assert "skipped" in done.stderr and "link" in done.stderr and "no caption" in done.stderr, done.describe()
    canary.check(allowed=(out,))
    final = out / "kosmosg_final.safetensors"
    assert final.is_file()

    earlier = Canary(tmp_path)
    again = stage1(init, data, out, "--max-steps", "2")
    assert_clear_error(again, "finished run.*--overwrite")
    earlier.check()
    replaced = stage1(init, data, out, "--max-steps", "2", "--overwrite")
    assert replaced.returncode == 0, replaced.describe()
    assert (out / "step-2" / "trainer.json").is_file()
    assert not list(out.glob(".*partial*"))


def test_truncated_image_data_is_one_line_naming_the_member(init, tmp_path):
    data = tmp_path / "data"
    broken = png_bytes(3, (40, 40))
    broken = broken[:60] + bytes(len(broken) - 60)  # header intact, pixel data gone
    make_tar(data / "shard-00000.tar", [(f"b{i}.json", b'{"kind": "caption", "caption": "a dog"}') for i in range(2)]
             + [(f"b{i}.target.png", broken) for i in range(2)])
    done = stage1(init, data, tmp_path / "out")
    assert_clear_error(done, r"shard-00000\.tar member b[01]\.target\.png")


# -- arguments --------------------------------------------------------------------------------------
BAD_ARGS = {
    "max_steps_0": (["--max-steps", "0"], "--max-steps"),
    "max_steps_negative": (["--max-steps", "-5"], "--max-steps"),
    "batch_size_0": (["--batch-size", "0"], "--batch-size"),
    "grad_accum_0": (["--grad-accum", "0"], "--grad-accum"),
    "save_every_0": (["--save-every", "0"], "--save-every"),
    "lr_nan": (["--lr", "nan"], "--lr"),
    "seed_negative": (["--seed", "-1"], "--seed"),
    "betas_one": (["--betas", "0.9", "1.0"], "--betas"),
    "max_steps_text": (["--max-steps", "abc"], "max-steps"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_argument_is_one_line_before_any_work(case, tmp_path):
    extra, pattern = BAD_ARGS[case]
    canary = Canary(tmp_path)
    done = run_python(["-m", "training.stage1_mllm", "--init", str(tmp_path / "none.pt"), "--data", str(tmp_path),
                       "--output-dir", str(tmp_path / "out"), *extra], cwd=REPO)
    assert_clear_error(done, pattern)
    canary.check()


SCRIPTS = {
    "training.stage2_align": ["--init", "x", "--teacher", "x", "--data", "x"],
    "training.stage3_instruct": ["--init", "x", "--sd", "x", "--data", "x"],
    "training.gill_train": ["--release", "x", "--llm", "x", "--vision", "x", "--teacher", "x", "--data", "x"],
}


@pytest.mark.parametrize("module", sorted(SCRIPTS))
def test_every_training_script_checks_its_steps(module, tmp_path):
    done = run_python(["-m", module, *SCRIPTS[module], "--output-dir", str(tmp_path / "out"), "--max-steps", "0"],
                      cwd=REPO)
    assert_clear_error(done, "--max-steps")
    assert not (tmp_path / "out").exists()


# -- an earlier run and its checkpoints --------------------------------------------------------------
@pytest.fixture()
def caption_data(tmp_path):
    return make_tar(tmp_path / "data" / "shard-00000.tar", [], good=4).parent


@pytest.mark.parametrize("marker", ['{"step": -5}', "not json", '{"step": "3"}', "fifo"])
def test_damaged_resume_marker_is_refused_not_looped(marker, init, caption_data, tmp_path):
    step = tmp_path / "out" / "step-3"
    step.mkdir(parents=True)
    if marker == "fifo":
        os.mkfifo(step / "trainer.json")
    else:
        (step / "trainer.json").write_text(marker)
    canary = Canary(tmp_path)
    done = stage1(init, caption_data, tmp_path / "out", "--max-steps", "4")
    assert_clear_error(done, "trainer.json")
    canary.check(allowed=(tmp_path / "out" / "train_log.jsonl",))


def test_finished_run_is_not_overwritten(init, caption_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kosmosg_final.safetensors").write_bytes(b"an earlier run's weights")
    canary = Canary(tmp_path)
    assert_clear_error(stage1(init, caption_data, out), "finished run")
    canary.check()


def test_no_resume_over_checkpoints_needs_overwrite(init, caption_data, tmp_path):
    (tmp_path / "out" / "step-2").mkdir(parents=True)
    (tmp_path / "out" / "step-2" / "trainer.json").write_text('{"step": 2}')
    canary = Canary(tmp_path)
    assert_clear_error(stage1(init, caption_data, tmp_path / "out", "--no-resume"), "--overwrite")
    canary.check()


@pytest.mark.parametrize("case", ["output_is_data", "output_is_file", "init_is_the_final", "log_is_fifo"])
def test_output_that_is_an_input_or_not_a_folder(case, init, caption_data, tmp_path):
    out = tmp_path / "out"
    args = []
    if case == "output_is_data":
        out = caption_data
    elif case == "output_is_file":
        out.write_text("mine")
    elif case == "init_is_the_final":
        out.mkdir()
        final = out / "kosmosg_final.safetensors"
        final.write_bytes(Path(init).read_bytes()[:100])
        init, args = final, ["--overwrite"]
    else:
        out.mkdir()
        os.mkfifo(out / "train_log.jsonl")
    canary = Canary(tmp_path)
    assert_clear_error(stage1(init, caption_data, out, *args))
    canary.check()


def test_two_processes_each_print_one_line(tmp_path):
    done = run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       str(29800 + os.getpid() % 100), "-m", "training.stage1_mllm", "--init", "x", "--data", "x",
                       "--output-dir", str(tmp_path / "out"), "--batch-size", "0"], cwd=REPO)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: --batch-size")]
    assert len(lines) == 2 and done.returncode != 0, done.describe()
    assert 'File "' + str(REPO / "training") not in done.stderr, done.describe()  # no traceback of ours


# -- convert_data and build_openimages --------------------------------------------------------------
@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        image(i).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"photo {i}\n")
    return folder


def test_convert_refuses_existing_shards_and_overwrite_replaces_them(photos, tmp_path):
    out = tmp_path / "shards"
    assert convert("--folder", photos, "--out", out, "--per-shard", "1").returncode == 0
    assert len(list(out.glob("shard-*.tar"))) == 3
    canary = Canary(tmp_path)
    assert_clear_error(convert("--folder", photos, "--out", out), "--overwrite")
    canary.check()
    done = convert("--folder", photos, "--out", out, "--overwrite")
    assert done.returncode == 0, done.describe()
    assert [p.name for p in out.iterdir()] == ["shard-00000.tar"]  # the stale shards of the earlier run went


def test_convert_out_is_the_input_folder(photos, tmp_path):
    canary = Canary(tmp_path)
    assert_clear_error(convert("--folder", photos, "--out", photos), "input")
    canary.check()


def test_convert_never_writes_a_shard_over_one_of_its_images(photos, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "shard-00000.tar").write_bytes(png_bytes(1))  # a picture that happens to have this name
    (tmp_path / "list.jsonl").write_text(json.dumps({"kind": "caption", "caption": "x",
                                                     "images": {"target": "shards/shard-00000.tar"}}) + "\n")
    canary = Canary(tmp_path)
    assert_clear_error(convert("--jsonl", tmp_path / "list.jsonl", "--out", out, "--overwrite"), "input")
    canary.check()


BAD_LINES = {
    "not_json": (b"{oops\n", "line 1 is not JSON"),
    "not_utf8": (b'{"kind": "caption", "caption": "\xff"}\n', "not UTF-8"),
    "a_list": (b"[1, 2]\n", "JSON list"),
    "no_caption": (b'{"kind": "caption", "images": {"target": "photos/p0.png"}}\n', "no caption"),
    "bad_kind": (b'{"kind": "video"}\n', "sample kind"),
    "images_not_a_map": (b'{"kind": "caption", "caption": "x", "images": ["p0.png"]}\n', "images"),
    "second_line_bad": (b'{"kind": "caption", "caption": "x", "images": {"target": "photos/p0.png"}}\n{\n', "line 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_convert_bad_jsonl_line_writes_nothing(case, photos, tmp_path):
    content, pattern = BAD_LINES[case]
    (tmp_path / "list.jsonl").write_bytes(content)
    canary = Canary(tmp_path)
    assert_clear_error(convert("--jsonl", tmp_path / "list.jsonl", "--out", tmp_path / "shards"), pattern)
    canary.check(allowed=(tmp_path / "shards",))
    assert not list((tmp_path / "shards").glob("*")) if (tmp_path / "shards").exists() else True


@pytest.mark.parametrize("case",
                         ["caption_not_utf8", "image_fifo", "image_bomb", "image_strip_ok_header", "jsonl_fifo"])
def test_convert_bad_input_file_is_one_line(case, photos, tmp_path):
    source = ["--folder", photos]
    if case == "caption_not_utf8":
        (photos / "p1.txt").write_bytes(b"\xff\xfe caption")
    elif case == "image_fifo":
        os.mkfifo(photos / "z.png")
        (photos / "z.txt").write_text("a pipe")
    elif case == "image_bomb":
        (photos / "z.png").write_bytes(png_header_only(100_000, 100_000))
        (photos / "z.txt").write_text("a bomb")
    elif case == "image_strip_ok_header":
        (photos / "z.png").write_bytes(png_header_only(50_000, 50_000))
        (photos / "z.txt").write_text("a 2.5 GP image")
    else:
        os.mkfifo(tmp_path / "list.jsonl")
        source = ["--jsonl", tmp_path / "list.jsonl"]
    canary = Canary(tmp_path)
    assert_clear_error(convert(*source, "--out", tmp_path / "shards"))
    canary.check(allowed=(tmp_path / "shards",))
    assert not list((tmp_path / "shards").glob("*")) if (tmp_path / "shards").exists() else True


@pytest.mark.parametrize("case", ["per_shard_0", "folder_is_a_file", "empty_folder"])
def test_convert_bad_arguments(case, photos, tmp_path):
    args = {"per_shard_0": ["--folder", photos, "--per-shard", "0"],
            "folder_is_a_file": ["--folder", photos / "p0.png"],
            "empty_folder": ["--folder", tmp_path / "empty"]}[case]
    (tmp_path / "empty").mkdir()
    canary = Canary(tmp_path)
    assert_clear_error(convert(*args, "--out", tmp_path / "shards"))
    canary.check(allowed=(tmp_path / "shards",))


@pytest.mark.parametrize("case", ["bad_extractor", "existing_shards"])
def test_build_openimages_errors(case, photos, tmp_path):
    out = tmp_path / "shards"
    extractor = "no_such_module_xyz:extract"
    if case == "existing_shards":
        out.mkdir()
        (out / "shard-00000.tar").write_bytes(b"earlier")
        extractor = "json:loads"
    canary = Canary(tmp_path)
    done = run_python(["-m", "training.build_openimages", "--images", str(photos), "--out", str(out),
                       "--extractor", extractor, "--captioner", "json:dumps", "--segmenter", "json:dumps"], cwd=REPO)
    assert_clear_error(done, "no_such_module_xyz" if case == "bad_extractor" else "--overwrite")
    canary.check()
