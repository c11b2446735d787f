"""GILL's OPT and CLIP folders come from the Hub or from anyone: a config.json that declares a model
far larger than its weight files (transformers would allocate it all) or nonsense sizes is one
CheckpointError naming the file, before anything is built."""

from __future__ import annotations

import json
import shutil

import pytest

from support.hostile_harness import Canary, assert_clear_error, run_cli

from kosmosg_core.errors import CheckpointError
from kosmosg_core.gill.checkpoint import check_llm_folder, check_vision_folder


@pytest.fixture()
def release(tmp_path, gill_fixture):
    folder = tmp_path / "gill"
    shutil.copytree(gill_fixture, folder)
    return folder


def _edit(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _llm_width(release):
    return json.loads((release / "llm" / "config.json").read_text())["hidden_size"]


@pytest.mark.parametrize("changes,pattern", [
    ({"num_hidden_layers": 100_000_000}, r"declares a model of .* parameters, but the weight files .* hold only"),
    ({"max_position_embeddings": 10**11}, r"declares a model of"),
    ({"ffn_dim": 10**9}, r"declares a model of"),
    ({"vocab_size": -5}, r"vocab_size is '-5', not a positive whole number"),
    ({"num_hidden_layers": "24"}, r"num_hidden_layers is '24', not a positive whole number"),
    ({"num_attention_heads": 0}, r"num_attention_heads is '0'"),
    ({"num_attention_heads": 3}, r"do not fit hidden_size"),
    ({"num_hidden_layers": True}, r"not a positive whole number"),
])
def test_llm_config_that_does_not_fit_its_weights(release, changes, pattern):
    _edit(release / "llm" / "config.json", **changes)
    with pytest.raises(CheckpointError, match=pattern):
        check_llm_folder(str(release / "llm"), _llm_width(release))


@pytest.mark.parametrize("changes,pattern", [
    ({"num_hidden_layers": 10**7}, r"declares a model of"),
    ({"image_size": 10**6, "patch_size": 1}, r"declares a model of"),
    ({"patch_size": 0}, r"patch_size is '0'"),
    ({"patch_size": 10_000}, r"do not fit the image"),
    ({"intermediate_size": None}, r"intermediate_size is 'None'"),
])
def test_vision_config_that_does_not_fit_its_weights(release, changes, pattern):
    _edit(release / "vision" / "config.json", **changes)
    width = json.loads((release / "vision" / "config.json").read_text())["hidden_size"]
    with pytest.raises(CheckpointError, match=pattern):
        check_vision_folder(str(release / "vision"), width)


def test_the_real_fixture_folders_pass(release):
    check_llm_folder(str(release / "llm"), _llm_width(release))
    width = json.loads((release / "vision" / "config.json").read_text())["hidden_size"]
    check_vision_folder(str(release / "vision"), width)


def test_a_config_declaring_a_hundred_million_layers_is_refused_before_any_allocation(release, tmp_path):
    """Through the CLI under the harness's address-space cap: before the check this process was killed."""
    _edit(release / "llm" / "config.json", num_hidden_layers=100_000_000)
    out = tmp_path / "out.safetensors"
    canary = Canary(tmp_path)
    outcome = run_cli(["encode", "--backend", "gill", "--checkpoint", release, "--llm", release / "llm",
                       "--vision", release / "vision", "--prompt", "a dog", "--out", out])
    assert_clear_error(outcome, r"config\.json declares a model of")
    canary.check()
