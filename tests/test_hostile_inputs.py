"""Hostile images, prompts and GILL inputs: one clear error, nothing hangs, nothing blows up.

Every hostile file here is made by the generators below (PNG, GIF, BMP and TIFF headers written
byte by byte, FIFOs from ``os.mkfifo``). Cases that would take the machine's memory or hang run in
their own process through ``hostile_harness`` (8 GiB address-space cap, time limit); the rest run
in-process.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from support.hostile_harness import Canary, assert_clear_error, run_cli, run_python

from kosmosg_core.errors import CheckpointError, ImageError, PromptError
from kosmosg_core.image_processing import (
    MAX_IMAGE_PIXELS,
    MAX_RESIZED_PIXELS,
    check_resize,
    load_image_file,
    preprocess_images,
)
from kosmosg_core.kosmosg.layout import build_layout, build_negative_tokens
from kosmosg_core.prompt import split_prompt

# --------------------------------------------------------------------------------------------
# generators


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows: int | None = None, colour_type: int = 0) -> bytes:
    """A greyscale (or RGB, colour type 2) 8-bit PNG declaring ``width`` x ``height``; the IDAT
    holds ``rows`` zero rows (default: all of them, so the file is complete and decodes)."""
    channels = {0: 1, 2: 3}[colour_type]
    rows = height if rows is None else rows
    compressor = zlib.compressobj(9)
    line = b"\0" * (1 + width * channels)
    body = b"".join(compressor.compress(line) for _ in range(rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def gif_bytes(width: int, height: int) -> bytes:
    """A GIF whose screen and first frame declare ``width`` x ``height`` with a few bytes of LZW."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b";"


def bmp_bytes(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring ``width`` x ``height`` and no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def tiff_bytes(width: int, height: int) -> bytes:
    """A little-endian greyscale TIFF declaring ``width`` x ``height``, one strip of 16 bytes."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(tags) + 4
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, data_offset if tag == 273 else value)
                       if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0) for tag, kind, value in tags)
    return b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0" + b"\0" * 16


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def run_snippet(code: str):
    """``code`` in its own capped process (for library calls that could blow up or hang)."""
    return run_python(["-c", code])


# --------------------------------------------------------------------------------------------
# images through the CLI (own process: memory cap, timeout, canary)


@pytest.fixture()
def kosmos_release(official_fixture):
    return official_fixture / "checkpoint.pt"


def _encode_image(checkpoint, image, out, prompt="<i> on a beach"):
    return run_cli(["encode", "--checkpoint", checkpoint, "--prompt", prompt, "--image", image, "--out", out])


HOSTILE_IMAGE_FILES = {
    # name: (bytes maker, pattern of the one error line)
    "png_1x2000000_strip": (lambda: png_bytes(1, 2_000_000), r"aspect ratio|resiz"),
    "png_2000000x1_strip": (lambda: png_bytes(2_000_000, 1), r"aspect ratio|resiz"),
    "png_header_100000x100000": (lambda: png_bytes(100_000, 100_000, rows=2), r"pixels|bomb"),
    "png_header_12000x12000": (lambda: png_bytes(12_000, 12_000, rows=2), r"144,000,000 pixels"),
    "gif_65535x65535": (lambda: gif_bytes(65535, 65535), r"pixels|bomb"),
    "bmp_50000x50000": (lambda: bmp_bytes(50_000, 50_000), r"pixels|bomb"),
    "tiff_60000x60000": (lambda: tiff_bytes(60_000, 60_000), r"pixels|bomb"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_IMAGE_FILES))
def test_cli_refuses_hostile_image_files(kosmos_release, tmp_path, name):
    make, pattern = HOSTILE_IMAGE_FILES[name]
    suffix = {"png": ".png", "gif": ".gif", "bmp": ".bmp", "tif": ".tif"}[name[:3]]
    image = write(tmp_path / f"{name}{suffix}", make())
    canary = Canary(tmp_path)
    assert_clear_error(_encode_image(kosmos_release, image, tmp_path / "out.safetensors"), pattern)
    canary.check()


def test_cli_image_that_is_a_fifo_does_not_hang(kosmos_release, tmp_path):
    image = fifo(tmp_path / "photo.png")
    canary = Canary(tmp_path)
    assert_clear_error(_encode_image(kosmos_release, image, tmp_path / "out.safetensors"), r"named pipe")
    canary.check()


def test_cli_gill_image_strip_is_refused(gill_fixture, tmp_path):
    image = write(tmp_path / "strip.png", png_bytes(1, 2_000_000))
    outcome = run_cli(["encode", "--backend", "gill", "--checkpoint", gill_fixture, "--llm", gill_fixture / "llm",
                       "--vision", gill_fixture / "vision", "--prompt", "like<i>", "--image", image,
                       "--out", tmp_path / "out.safetensors"])
    assert_clear_error(outcome, r"aspect ratio|resiz")
    assert not (tmp_path / "out.safetensors").exists()


def test_thin_tensor_resize_is_refused_not_allocated():
    outcome = run_snippet(
        "import torch\n"
        "from kosmosg_core.errors import ImageError\n"
        "from kosmosg_core.image_processing import preprocess_images\n"
        "try:\n"
        "    preprocess_images(torch.zeros(1, 1, 200000, 3), 224)\n"
        "except ImageError as exc:\n"
        "    print('refused:', exc)\n"
    )
    assert not outcome.timed_out and outcome.returncode == 0, outcome.describe()
    assert "refused:" in outcome.stdout and "aspect ratio" in outcome.stdout, outcome.describe()


def test_huge_tensor_is_refused_before_its_float64_copy():
    outcome = run_snippet(  # a stride-0 view: 10001x10001 pixels that take no memory until copied
        "import torch\n"
        "from kosmosg_core.errors import ImageError\n"
        "from kosmosg_core.image_processing import preprocess_images\n"
        "try:\n"
        "    preprocess_images(torch.zeros(1, 1, 1, 3).expand(1, 10001, 10001, 3), 224)\n"
        "except ImageError as exc:\n"
        "    print('refused:', exc)\n"
    )
    assert not outcome.timed_out and outcome.returncode == 0, outcome.describe()
    assert "refused:" in outcome.stdout and "100,020,001 pixels" in outcome.stdout, outcome.describe()


# --------------------------------------------------------------------------------------------
# images in-process (cheap: refused from the header, or small)


@pytest.mark.parametrize("make", [
    lambda: png_bytes(30_000, 30_000, rows=1),
    lambda: gif_bytes(20_000, 20_000),
    lambda: bmp_bytes(-20_000, 20_000),
    lambda: tiff_bytes(15_000, 15_000),
], ids=["png", "gif", "bmp_negative_width", "tiff"])
def test_decompression_bombs_are_one_image_error(tmp_path, make):
    path = write(tmp_path / "bomb.img", make())
    with pytest.raises(ImageError) as info:
        load_image_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all", png_bytes(64, 64)[:60],
                                     b"\x89PNG\r\n\x1a\n" + b"\xff" * 40, b"GIF89a\xff\xff"],
                         ids=["empty", "text", "truncated_png", "garbage_png", "truncated_gif"])
def test_unreadable_image_files_are_one_image_error(tmp_path, content):
    path = write(tmp_path / "photo.png", content)
    with pytest.raises(ImageError, match="not a readable image|no pixels|pixels"):
        load_image_file(path)


def test_image_path_that_is_a_folder_or_missing(tmp_path):
    with pytest.raises(ImageError, match="a folder"):
        load_image_file(tmp_path)
    with pytest.raises(ImageError, match="not found"):
        load_image_file(tmp_path / "missing.png")


def test_oversized_image_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as handle:  # sparse: 1 GiB + 1 byte of nothing on disk
        handle.truncate((1 << 30) + 1)
    with pytest.raises(ImageError, match="bytes, more than"):
        load_image_file(path)


def test_real_photo_sizes_still_pass(tmp_path):
    """8000x8000 is a real photo size: the limit must not refuse it (and the result is exact)."""
    path = write(tmp_path / "big.png", png_bytes(8000, 8000))
    pixels = preprocess_images([path], 56)
    assert pixels.shape == (1, 3, 56, 56) and torch.isfinite(pixels).all()
    assert 8000 * 8000 <= MAX_IMAGE_PIXELS
    assert check_resize(224, 224 * 900, 224) == (224, 224 * 900)  # a 900:1 panorama strip passes
    with pytest.raises(ImageError, match="aspect ratio"):
        check_resize(1, 1100, 224)
    assert 224 * 224 * 900 <= MAX_RESIZED_PIXELS


def _odd_png(depth: int, colour_type: int, channels: int, extra: bytes = b"") -> bytes:
    raw = b"".join(b"\0" + b"\x7f" * ((8 * depth * channels + 7) // 8) for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, depth, colour_type, 0, 0, 0))
            + extra + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("data", [
    _odd_png(16, 0, 1), _odd_png(1, 0, 1), _odd_png(16, 6, 4), _odd_png(8, 4, 2),
    _odd_png(8, 0, 1, _chunk(b"eXIf", b"MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x01" * 30)),
    _odd_png(8, 0, 1, _chunk(b"eXIf", b"II\x2a\x00\x08\x00\x00\x00\x01\x00\x69\x87\x04\x00\x01\x00\x00\x00"
                                     b"\x08\x00\x00\x00\x00\x00\x00\x00")),
], ids=["grey16", "bilevel", "rgba16", "grey_alpha", "exif_garbage", "exif_self_loop"])
def test_odd_but_valid_images_are_rightly_accepted(tmp_path, data):
    path = write(tmp_path / "odd.png", data)
    assert preprocess_images([path], 4).shape == (1, 3, 4, 4)


def test_pil_image_over_the_limit_is_refused():
    from PIL import Image

    with pytest.raises(ImageError, match="pixels"):
        preprocess_images([Image.new("L", (MAX_IMAGE_PIXELS // 1000 + 1, 1000))], 32)


# --------------------------------------------------------------------------------------------
# prompts (Kosmos-G side)


@pytest.mark.parametrize("digit", ["\u0661", "\uff11", "\u0967", "\u00b9", "\U0001d7cf"],
                         ids=["arabic_indic", "fullwidth", "devanagari", "superscript", "math_bold"])
def test_non_ascii_digits_are_not_image_numbers(digit):
    segments, order = split_prompt(f"a <image{digit}> b <i>", 1)
    assert order == [0] and f"<image{digit}>" in segments[0]
    with pytest.raises(PromptError, match="0 image placeholder"):
        split_prompt(f"a <image{digit}>", 1)


def test_huge_image_number_is_a_prompt_error():
    with pytest.raises(PromptError, match="no run has that many images"):
        split_prompt("<image" + "9" * 5000 + ">", 1)
    with pytest.raises(PromptError, match="<image123456>"):
        split_prompt("<image123456>", 1)


@pytest.mark.parametrize("prompt,position", [("caf\udcff <i>", 3), ("<i> \ud800", 4), ("\udfff", 0)])
def test_lone_surrogates_are_a_prompt_error_with_position(prompt, position):
    with pytest.raises(PromptError, match=f"lone surrogate U\\+D[89A-F][0-9A-F]{{2}} at character {position}"):
        split_prompt(prompt, 1)


def test_lone_surrogate_in_negative_prompt(fixture_encoder):
    with pytest.raises(PromptError, match="negative prompt is not valid Unicode"):
        build_negative_tokens(fixture_encoder.tokenizer, "blurry \udc80")


def test_cli_prompt_with_invalid_utf8_bytes(kosmos_release, official_fixture, tmp_path):
    prompt = os.fsdecode(b"<i> caf\xff")  # what the shell hands Python for a prompt that is not UTF-8
    outcome = _encode_image(kosmos_release, official_fixture / "images" / "noise.png", tmp_path / "o.safetensors",
                            prompt)
    assert_clear_error(outcome, r"lone surrogate .* at character 7")


@pytest.mark.parametrize("typed", ["<image>", "</image>", "<s>", "</s>", "<pad>", "<mask>", "</doc>", "</line>"])
def test_typed_kosmos_specials_stay_text(fixture_encoder, typed):
    tok = fixture_encoder.tokenizer
    layout = build_layout(tok, f"{typed} a <i> {typed}", 1, 4)
    assert layout.tokens.count(tok.bos_id) == 1 and layout.tokens[0] == tok.bos_id
    assert layout.tokens.count(tok.boi_id) == 5 and layout.tokens.count(tok.eoi_id) == 1
    assert tok.eos_id not in layout.tokens and tok.pad_id not in layout.tokens
    assert sum(layout.image_mask) == 4


def test_tokenizer_that_yields_a_special_id_cannot_forge_the_layout(fixture_encoder):
    """A SentencePiece model listing ``<image>`` as a piece would let typed text forge a slot."""
    tok = fixture_encoder.tokenizer

    class Forging:
        def __getattr__(self, name):
            return getattr(tok, name)

        def encode(self, text):
            return [tok.boi_id if piece == "<image>" else tok.encode(piece)[0] for piece in text.split()]

    layout = build_layout(Forging(), "<image> a <i>", 1, 4)
    assert layout.tokens.count(tok.boi_id) == 5 and layout.tokens[1] == tok.unk_id


# --------------------------------------------------------------------------------------------
# prompts and generation (GILL side, in-process on the tiny official-format fixture)


@pytest.mark.parametrize("typed", ["[IMG0]", "[IMG7]", "<|image|>", "</s>", "<pad>", "a[IMG0]b</s>c<|image|>"])
def test_gill_typed_special_tokens_are_plain_text(gill, typed):
    _, ids = gill.context(f"Caption {typed} this")
    forbidden = set(gill.img_token_ids) | {gill.tokenizer.convert_tokens_to_ids("<|image|>"),
                                           gill.tokenizer.pad_token_id}
    assert not forbidden & set(ids), ids
    assert ids.count(gill.tokenizer.bos_token_id) == 1 and ids[0] == gill.tokenizer.bos_token_id
    assert gill.decode([i for i in ids[1:] if i >= 0]).strip().startswith("Caption")


def test_gill_plain_text_tokenises_as_before(gill):
    rng = random.Random(14)
    alphabet = "ab cd\n\t  \u00fc\U0001f600[]<>/|IMGs0123.,'"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        if "[IMG" in text and "]" in text or "</s>" in text or "<pad>" in text or "<|image|>" in text:
            continue
        assert gill.text_ids(text, True) == gill.tokenizer(text, add_special_tokens=True).input_ids, text


def test_gill_typed_image_token_cannot_become_an_image_slot(gill):
    _, ids = gill.context("[IMG0][IMG1][IMG2][IMG3][IMG4][IMG5][IMG6][IMG7]")
    assert not set(ids) & set(gill.img_token_ids)


def test_gill_prompt_odd_unicode(gill, gill_fixture):
    with pytest.raises(PromptError, match="lone surrogate U\\+D800 at character 2"):
        gill.encode("a \ud800 b")
    with pytest.raises(PromptError, match="0 image placeholder"):
        gill.encode("like <image\u0661>", [gill_fixture / "images" / "noise.png"])


def _ids_of_length(gill, n: int) -> str:
    text = " a" * (n - 1)  # BOS + n - 1 tokens of " a"
    assert len(gill.text_ids(text, True)) == n
    return text


def test_gill_prompt_longer_than_positions(gill):
    limit = gill.max_positions
    with pytest.raises(PromptError, match=f"takes {limit + 1} positions .* has {limit} positions"):
        gill.encode(_ids_of_length(gill, limit + 1))
    with pytest.raises(PromptError, match=r"\[IMG\] block needs 8 more"):
        gill.encode(_ids_of_length(gill, limit - 7))
    slot, ids = gill.encode(_ids_of_length(gill, limit - 8))  # exactly fills the positions
    assert len(ids) == limit - 8 and slot.cond.shape == (1, 77, 768)


def test_gill_huge_prompt_is_refused_before_embedding(gill, monkeypatch):
    made = []
    monkeypatch.setattr(type(gill), "input_embeddings", lambda self, ids: made.append(len(ids)))
    with pytest.raises(PromptError, match="positions"):
        gill.encode("word " * 200_000)
    assert made == []


def test_gill_generation_past_positions(gill):
    limit = gill.max_positions
    with pytest.raises(PromptError, match=f"generating {limit} tokens needs {limit} more"):
        gill.generate("A photo of", max_new_tokens=limit)
    text = _ids_of_length(gill, limit - 4)
    assert len(gill.generate(text, max_new_tokens=4, stop_at_newline=False).ids[0]) <= 4  # just fits


def test_gill_image_block_running_past_positions(gill):
    """[IMG0] brings 7 more tokens with it: forced (gen_scale) near the end, they would not fit."""
    limit = gill.max_positions
    with pytest.raises(PromptError, match="generation ran past the LLM's .* positions"):
        gill.generate(_ids_of_length(gill, limit - 4), max_new_tokens=4, gen_scale=1e9, stop_at_newline=False)


@pytest.mark.parametrize("setting", [
    {"temperature": -1.0}, {"temperature": float("nan")}, {"temperature": float("inf")},
    {"top_p": 0.0}, {"top_p": 1.5}, {"top_p": float("nan")}, {"top_p": -0.1, "temperature": 1.0},
    {"max_new_tokens": -1}, {"max_new_tokens": 2.5}, {"max_new_tokens": True},
    {"min_word_tokens": -3}, {"ret_scale": float("nan")}, {"gen_scale": float("-inf")}, {"seed": 2**64},
], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_gill_generation_settings_are_checked(gill, setting):
    with pytest.raises(PromptError, match="must be") as info:
        gill.generate("A photo of", **{"max_new_tokens": 2, **setting})
    assert isinstance(info.value, ValueError)


def test_gill_zero_new_tokens_is_fine(gill):
    assert gill.generate("A photo of", max_new_tokens=0).ids.shape == (1, 0)


@pytest.mark.parametrize("flags,pattern", [
    (["--temperature", "-1"], r"temperature(: -1.0 is outside| must be >= 0)"),
    (["--temperature", "nan"], r"temperature(: nan is outside| must be a finite number)"),
    (["--top-p", "0"], r"top.p(: 0.0 is outside| must be in \(0, 1\])"),
    (["--max-new-tokens", "-5"], r"max.new.tokens(: -5 is outside| must be a whole number)"),
    (["--max-new-tokens", "100000"], r"has 2048 positions"),
])
def test_cli_generate_text_bad_settings(gill_fixture, tmp_path, flags, pattern):
    canary = Canary(tmp_path)
    outcome = run_cli(["generate-text", "--checkpoint", gill_fixture, "--llm", gill_fixture / "llm", "--vision",
                       gill_fixture / "vision", "--prompt", "A photo of", *flags])
    assert_clear_error(outcome, pattern)
    canary.check()


# --------------------------------------------------------------------------------------------
# retrieval index


def _index_file(path: Path, embeddings: torch.Tensor, paths: list[str] | None = None) -> Path:
    from safetensors.torch import save_file

    from kosmosg_core.gill.retrieval import INDEX_FORMAT

    paths = [f"/img/{i}.png" for i in range(embeddings.shape[0])] if paths is None else paths
    save_file({"embeddings": embeddings}, str(path), metadata={"format": INDEX_FORMAT, "paths": json_dumps(paths)})
    return path


def json_dumps(value) -> str:
    import json

    return json.dumps(value)


def _raw_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json_dumps(header).encode()
    return write(path, struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_index_with_non_finite_embeddings_is_refused(tmp_path, bad):
    from kosmosg_core.gill.retrieval import RetrievalIndex

    embeddings = torch.randn(5, 8)
    embeddings[3, 2] = bad
    path = _index_file(tmp_path / "index.safetensors", embeddings)
    with pytest.raises(CheckpointError, match="NaN or infinite embeddings \\(first at row 3\\)") as info:
        RetrievalIndex.load(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["huge_header", "huge_shape", "paths_mismatch", "bad_paths", "short"])
def test_index_header_is_checked_before_reading(tmp_path, case):
    from kosmosg_core.gill.retrieval import INDEX_FORMAT, RetrievalIndex

    meta = {"format": INDEX_FORMAT, "paths": json_dumps(["a", "b"])}
    entry = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}
    path = tmp_path / "index.safetensors"
    if case == "huge_header":
        write(path, struct.pack("<Q", 1 << 60) + b"{}")
    elif case == "huge_shape":
        _raw_safetensors(path, {"__metadata__": meta, "embeddings": {**entry, "shape": [10**9, 256],
                                                                     "data_offsets": [0, 10**9 * 1024]}}, b"\0" * 32)
    elif case == "paths_mismatch":
        _raw_safetensors(path, {"__metadata__": {**meta, "paths": json_dumps(["a"])}, "embeddings": entry}, b"\0" * 32)
    elif case == "bad_paths":
        _raw_safetensors(path, {"__metadata__": {**meta, "paths": "{not json"}, "embeddings": entry}, b"\0" * 32)
    else:
        write(path, b"\x05\0")
    pattern = {"huge_header": "declares a .*-byte header", "huge_shape": "declares 1000000000x256",
               "paths_mismatch": "2 embeddings for 1 paths", "bad_paths": "paths is missing or malformed",
               "short": "shorter than a safetensors header|damaged|truncated|empty"}[case]
    with pytest.raises(CheckpointError, match=pattern):
        RetrievalIndex.load(str(path))


def test_index_that_is_a_fifo_does_not_hang(gill_fixture, tmp_path):
    index = fifo(tmp_path / "index.safetensors")
    canary = Canary(tmp_path)
    outcome = run_cli(["encode", "--backend", "gill", "--checkpoint", gill_fixture, "--llm", gill_fixture / "llm",
                       "--vision", gill_fixture / "vision", "--index", index, "--prompt", "a cat",
                       "--out", tmp_path / "out.safetensors"])
    assert_clear_error(outcome, r"named pipe")
    canary.check()


def _build(gill_fixture, source, out):
    return run_cli(["gill-index", "build", source, "--out", out, "--checkpoint", gill_fixture,
                    "--llm", gill_fixture / "llm", "--vision", gill_fixture / "vision"])


def test_index_build_source_that_is_a_fifo(gill_fixture, tmp_path):
    source = fifo(tmp_path / "images")
    outcome = _build(gill_fixture, source, tmp_path / "i.safetensors")
    assert_clear_error(outcome, r"is not a folder")
    assert not (tmp_path / "i.safetensors").exists()


def test_index_build_skips_fifos_and_non_images(gill_fixture, tmp_path):
    from kosmosg_core.gill.retrieval import RetrievalIndex

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "real.png").write_bytes((gill_fixture / "images" / "noise.png").read_bytes())
    fifo(folder / "pipe.png")
    (folder / "notes.jpg").write_text("not an image")
    write(folder / "bomb.gif", gif_bytes(65535, 65535))
    out = tmp_path / "index.safetensors"
    outcome = _build(gill_fixture, folder, out)
    assert outcome.returncode == 0 and not outcome.timed_out, outcome.describe()
    assert "Traceback" not in outcome.stderr and "skipped 3 file(s)" in outcome.stderr, outcome.describe()
    assert [Path(p).name for p in RetrievalIndex.load(str(out)).paths] == ["real.png"]


def test_index_build_with_nothing_readable(gill_fixture, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    fifo(folder / "pipe.png")
    (folder / "notes.jpg").write_text("not an image")
    canary = Canary(tmp_path)
    assert_clear_error(_build(gill_fixture, folder, tmp_path / "i.safetensors"), r"no readable images|no images")
    canary.check()


def test_index_import_of_a_fifo_does_not_hang(tmp_path):
    source = fifo(tmp_path / "cc3m_embeddings_urls.npy")
    assert_clear_error(run_cli(["gill-index", "import", source, "--out", tmp_path / "i.safetensors"]), r"named pipe")


def test_index_import_goes_through_the_restricted_unpickler(tmp_path):
    planted = tmp_path / "planted.txt"
    evil = tmp_path / "cc3m_embeddings_urls.npy"  # builtins.open(planted, 'w') at load time
    evil.write_bytes(b"cbuiltins\nopen\n(V" + str(planted).encode() + b"\nVw\ntR.")
    canary = Canary(tmp_path)
    assert_clear_error(run_cli(["gill-index", "import", evil, "--out", tmp_path / "i.safetensors"]), r"refused")
    canary.check()
    assert not planted.exists()


@pytest.mark.parametrize("data,pattern", [
    ({"paths": ["a", "b"], "embeddings": [[0.0, float("nan")], [1.0, 2.0]]}, "NaN or infinite"),
    ({"paths": ["a", "b"], "embeddings": [[0.0, 1.0], [1.0, 2.0, 3.0]]}, "different widths"),
    ({"paths": ["a"], "embeddings": [[0.0, 1.0], [1.0, 2.0]]}, "2 embeddings for 1 paths"),
    ({"paths": "a", "embeddings": [[0.0, 1.0]]}, "must be lists"),
    ({"paths": ["a"], "embeddings": [["x", "y"]]}, "not a vector of numbers"),
], ids=["nan", "ragged", "count", "paths_not_list", "strings"])
def test_index_import_of_a_malformed_official_file(tmp_path, data, pattern):
    from kosmosg_core.gill.retrieval import RetrievalIndex

    path = tmp_path / "cc3m_embeddings_urls.npy"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(CheckpointError, match=pattern):
        RetrievalIndex.import_official(str(path))


def test_index_scores_stay_finite_after_a_round_trip(tmp_path):
    from kosmosg_core.gill.retrieval import RetrievalIndex

    index = RetrievalIndex(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), ["zero", "x"])  # a zero row is fine
    index.save(str(tmp_path / "i.safetensors"))
    scores = RetrievalIndex.load(str(tmp_path / "i.safetensors")).scores(torch.tensor([[1.0, 0.0]]), torch.tensor(0.0))
    assert torch.isfinite(scores).all() and math.isclose(float(scores[0, 1]), 1.0, rel_tol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["i.safetensors"]  # no temporary left behind
    assert np.isfinite(scores.numpy()).all()
