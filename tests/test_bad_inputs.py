"""Every bad input gets a clear error that says what was expected and what to do."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from kosmosg_core import CheckpointError, ImageError, PromptError, TokenizerError, load_kosmosg, open_checkpoint
from kosmosg_core.kosmosg.synthetic import random_state_dict, tiny_size


def test_missing_checkpoint_says_what_to_download(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*checkpoint_final.pt"):
        open_checkpoint(tmp_path / "checkpoint_final.pt")


@pytest.mark.parametrize("keys,expected", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (4,), "first_stage_model.decoder.conv_in.weight": (4,)},
     "Stable Diffusion checkpoint.*Load Checkpoint"),
    ({"visual.conv1.weight": (4,), "visual.transformer.resblocks.0.ln_1.weight": (4,)},
     "ViT-L-14-sd.pt.*checkpoint_final.pt"),
    ({"model.gen_text_hidden_fcs.0.fc.weight": (4,), "model.input_embeddings.weight": (4,)}, "GILL checkpoint"),
    ({"foo.bar": (4,)}, r"not a Kosmos-G checkpoint: its weights are named foo\.\*"),
])
def test_wrong_model_family_is_named(tmp_path, keys, expected):
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"wrong{suffix}"
        tensors = {k: torch.zeros(s) for k, s in keys.items()}
        if suffix == ".pt":
            torch.save({"state_dict": tensors}, path)
        else:
            save_file(tensors, path)
        with pytest.raises(CheckpointError, match=expected):
            open_checkpoint(path)


def test_stage1_and_stage2_files(tmp_path, tiny_tokenizer_dir):
    state = random_state_dict(tiny_size(400))
    stage1 = {k: v for k, v in state.items() if not k.startswith("aligner.")}
    torch.save({"model": stage1}, tmp_path / "checkpoint_stage1.pt")
    with pytest.raises(CheckpointError, match="stage-1.*no AlignerNet.*checkpoint_final.pt"):
        load_kosmosg(tmp_path / "checkpoint_stage1.pt", tokenizer=str(tiny_tokenizer_dir))

    stage2_path = tmp_path / "checkpoint_stage2.pt"
    stage2 = random_state_dict(tiny_size(400, with_reconstruction=True))
    stage2["aligner.clip_encoder.text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 64)  # frozen CLIP
    torch.save({"model": stage2}, stage2_path)
    assert open_checkpoint(stage2_path).kind == "stage2"
    with pytest.raises(CheckpointError, match="stage-2.*checkpoint_final.pt"):
        load_kosmosg(stage2_path, tokenizer=str(tiny_tokenizer_dir), allow_stage2=False)
    encoder = load_kosmosg(stage2_path, tokenizer=str(tiny_tokenizer_dir))
    aligned = encoder.encode("a dog").cond
    # AlignerNet N (stage-2 training) is loaded too and reconstructs MLLM-wide states
    assert encoder.model.aligner.reconstruct(aligned, 5).shape == (1, 5, 128)


def test_truncated_and_fake_files(tmp_path, official_fixture, tiny_checkpoint):
    data = (official_fixture / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*Download or copy it again"):
        open_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html>Access denied</html>")
    with pytest.raises(CheckpointError, match="HTML/XML page"):
        open_checkpoint(tmp_path / "page.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="the file is empty"):
        open_checkpoint(tmp_path / "empty.pt")

    from kosmosg_core.kosmosg.convert import convert

    converted = tmp_path / "full.safetensors"
    convert(str(tiny_checkpoint), str(converted))
    blob = converted.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        open_checkpoint(tmp_path / "garbage.safetensors")


def test_incomplete_checkpoint_names_missing_weights(tmp_path, tiny_tokenizer_dir):
    state = random_state_dict(tiny_size(400))
    del state["aligner.encoder.layer_norm.weight"]
    torch.save({"model": state}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks 1 weight.*aligner.encoder.layer_norm.weight"):
        load_kosmosg(tmp_path / "partial.pt", tokenizer=str(tiny_tokenizer_dir))


def test_missing_tokenizer_lists_places_searched(tmp_path, tiny_checkpoint):
    lonely = tmp_path / "checkpoint_final.pt"
    shutil.copy(tiny_checkpoint, lonely)
    with pytest.raises(TokenizerError) as error:
        load_kosmosg(lonely)
    message = str(error.value)
    assert str(tmp_path) in message and str(tmp_path / "tokenizer") in message
    assert "sentencepiece.bpe.model" in message and "dict.txt" in message and "--tokenizer" in message


def test_tokenizer_of_another_model_is_refused(official_fixture, tiny_checkpoint):
    with pytest.raises(TokenizerError, match="307 entries.*400 rows.*do not belong together"):
        load_kosmosg(tiny_checkpoint, tokenizer=str(official_fixture))


@pytest.mark.parametrize("prompt,count,expected", [
    ("<i> wearing <i>", 3, "2 image placeholder.*3 image"),
    ("a dog", 1, "0 image placeholder.*1 image"),
    ("<image1> and <i>", 1, "mixes <i> with numbered"),
    ("<image3> and <image1>", 2, "<image3> but 2 image"),
    ("<image1> twice <image1>", 2, "never uses <image2>"),
    ("<image0>", 1, "numbering starts at <image1>"),
])
def test_image_count_and_references(fixture_encoder, prompt, count, expected):
    pictures = [torch.rand(1, 30, 30, 3)] * count
    with pytest.raises(PromptError, match=expected):
        fixture_encoder.encode(prompt, pictures)


def test_numbered_placeholders_reuse_images(fixture_encoder, official_fixture):
    noise, shapes = official_fixture / "images" / "noise.png", official_fixture / "images" / "shapes.png"
    numbered = fixture_encoder.encode("<image2> wearing <image1>", [shapes, noise]).cond
    assert torch.equal(numbered, fixture_encoder.encode("<i> wearing <i>", [noise, shapes]).cond)
    reused = fixture_encoder.encode("<image1> next to <image1>", [noise], intermediates=True)
    assert reused.intermediates["pixel_values"].shape[0] == 2


def test_too_long_prompt(fixture_encoder):
    with pytest.raises(PromptError, match=r"is \d+ tokens long.*at most 2048"):
        fixture_encoder.encode("<i> " * 220, [torch.rand(1, 20, 20, 3)] * 220)
    with pytest.raises(PromptError, match="at most 2048"):
        fixture_encoder.encode("a dog", negative="ugly " * 3000)
    with pytest.raises(PromptError, match="negative prompt is text only"):
        fixture_encoder.encode("a dog", negative="<i>")


def test_bad_images(fixture_encoder, tmp_path):
    with pytest.raises(ImageError, match=r"\[B,H,W,C\].*got shape \(1, 3, 32, 32\)"):
        fixture_encoder.encode("<i>", [torch.rand(1, 3, 32, 32)])
    with pytest.raises(ImageError, match="NaN"):
        fixture_encoder.encode("<i>", [torch.full((1, 8, 8, 3), float("nan"))])
    (tmp_path / "notes.png").write_text("not a png")
    with pytest.raises(ImageError, match="not a readable image file"):
        fixture_encoder.encode("<i>", [tmp_path / "notes.png"])
    with pytest.raises(ImageError, match="image file not found"):
        fixture_encoder.encode("<i>", [tmp_path / "nope.png"])
    with pytest.raises(ImageError, match="unsupported image type int"):
        fixture_encoder.encode("<i>", [7])
