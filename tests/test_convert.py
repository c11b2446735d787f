"""Converted safetensors: bit-identical outputs, embedded tokenizer, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from kosmosg_core import CheckpointError, load_kosmosg, open_checkpoint
from kosmosg_core.cli import main


@pytest.fixture(scope="module")
def converted(official_fixture, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "kosmosg.safetensors"
    assert main(["convert", str(official_fixture / "checkpoint.pt"), str(out)]) == 0
    return out


def test_converted_file_gives_bit_identical_outputs(converted, official_fixture, fixture_encoder):
    from_st = load_kosmosg(converted)  # tokenizer comes from inside the file
    images = official_fixture / "images"
    cases = json.loads((official_fixture / "cases.json").read_text())
    for case in cases:
        paths = [images / name for name in case["images"]]
        a = fixture_encoder.encode(case["prompt"], paths, case["negative"], intermediates=True)
        b = from_st.encode(case["prompt"], paths, case["negative"], intermediates=True)
        assert torch.equal(a.cond, b.cond) and torch.equal(a.uncond, b.uncond), case["name"]
        assert torch.equal(a.intermediates["mllm_hidden"], b.intermediates["mllm_hidden"])


def test_converted_file_layout(converted):
    with safe_open(str(converted), "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
        assert handle.get_tensor("gpt_model.decoder.embed_tokens.weight").dtype == torch.float16
    assert metadata["format"] == "kosmosg-core/1" and metadata["kind"] == "final"
    assert {"tokenizer.sentencepiece_model", "tokenizer.dict_txt"} <= keys
    assert not any(k.endswith(("output_projection.weight", "_float_tensor", "sope.scale")) for k in keys)
    assert open_checkpoint(converted).kind == "final"


def test_convert_refuses_same_file_and_leaves_no_partial(official_fixture, tmp_path):
    from kosmosg_core.kosmosg.convert import convert

    with pytest.raises(CheckpointError, match="same file"):
        convert(str(official_fixture / "checkpoint.pt"), str(official_fixture / "checkpoint.pt"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes((official_fixture / "checkpoint.pt").read_bytes()[:5000])
    assert main(["convert", str(broken), str(tmp_path / "out.safetensors")]) == 2
    assert list(tmp_path.iterdir()) == [broken]
