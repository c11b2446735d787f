"""Parity with the official implementation: the CLI, end to end, on every fixture case."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from support import REPO, fixture_cases, require_fixture

from kosmosg_core.cli import main

CASES = fixture_cases()
TOLERANCE = 1e-4
EXACT = ("tokens", "img_mask", "uncond_tokens")
CLOSE = ("cond", "uncond", "pixel_values", "image_embeds", "mllm_hidden", "uncond_mllm_hidden")


def encode_args(fixture, case, out, checkpoint=None):
    args = ["encode", "--checkpoint", str(checkpoint or fixture / "checkpoint.pt"), "--tokenizer", str(fixture),
            "--prompt", case["prompt"], "--negative", case["negative"], "--out", str(out), "--dump-intermediates"]
    for image in case["images"]:
        args += ["--image", str(fixture / "images" / image)]
    return args


def test_fixtures_present():
    require_fixture("kosmosg-official-tiny", "cases.json")
    assert CASES, "no Kosmos-G fixture cases found"


def expected_outputs(fixture, case) -> dict:
    """The official implementation's outputs for one case, keyed without the case's prefix."""
    return {k.split(".", 1)[1]: v for k, v in load_file(fixture / "expected.safetensors").items()
            if k.startswith(case["name"] + ".")}


def assert_matches_official(got: dict, expected: dict, where: str = "cpu") -> None:
    """Token ids and masks exactly; tensors within TOLERANCE; nothing image-related for a text-only case."""
    for key in EXACT:
        assert torch.equal(got[key], expected[key]), key
    for key in CLOSE:
        if key not in expected:
            assert key not in got, f"{key} written for a case without images"
            continue
        assert got[key].shape == expected[key].shape, key
        diff = (got[key] - expected[key]).abs().max().item()
        assert diff <= TOLERANCE, f"{key}: max abs diff {diff:.2e} on {where}"


@pytest.mark.parametrize("fixture,case", CASES, ids=[f"{d.name}-{c['name']}" for d, c in CASES])
def test_cli_encode_matches_official(fixture, case, tmp_path):
    out = tmp_path / "out.safetensors"
    assert main(encode_args(fixture, case, out)) == 0
    assert_matches_official(load_file(out), expected_outputs(fixture, case))


def test_cli_runs_as_module(official_fixture, tmp_path):
    """The real entry point, in a fresh interpreter, on the hardest image case."""
    case = {"prompt": "<i> in the style of <i>", "negative": "", "images": ["portrait.png", "rgba_alpha.png"]}
    out = tmp_path / "out.safetensors"
    done = subprocess.run([sys.executable, "-m", "kosmosg_core", *encode_args(official_fixture, case, out)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = load_file(official_fixture / "expected.safetensors")
    diff = (load_file(out)["cond"] - expected["resize_portrait_alpha.cond"]).abs().max().item()
    assert diff <= TOLERANCE


def test_fp16_and_bf16_stay_near_fp32(fixture_encoder, official_fixture):
    from kosmosg_core import load_kosmosg

    expected = load_file(official_fixture / "expected.safetensors")["wearing.cond"]
    images = [official_fixture / "images" / "noise.png", official_fixture / "images" / "shapes.png"]
    for dtype, tolerance in (("fp16", 2e-2), ("bf16", 2e-1)):
        encoder = load_kosmosg(official_fixture / "checkpoint.pt", dtype=dtype)
        cond = encoder.encode("<i> wearing <i>", images).cond.float()
        assert encoder.dtype != torch.float32
        assert (cond - expected).abs().max().item() <= tolerance, dtype
