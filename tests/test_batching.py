"""Batched encoding of prompts of different lengths equals one-by-one encoding."""

from __future__ import annotations

import torch


def test_batch_equals_one_by_one(fixture_encoder, official_fixture):
    images = official_fixture / "images"
    prompts = ["a red apple on a wooden table", "<i> next to <i> under a blue sky", "<i> in the jungle", "x"]
    image_lists = [[], [images / "gradient.png", images / "noise.png"], [images / "landscape.png"], []]
    negatives = ["", "blurry, low quality", None, "ugly"]
    batch = fixture_encoder.encode_batch(prompts, image_lists, negatives)
    assert batch.cond.shape[0] == batch.uncond.shape[0] == len(prompts)
    for i, (prompt, imgs, negative) in enumerate(zip(prompts, image_lists, negatives)):
        single = fixture_encoder.encode(prompt, imgs, negative)
        assert (batch.cond[i] - single.cond[0]).abs().max().item() <= 1e-5, prompt
        assert (batch.uncond[i] - single.uncond[0]).abs().max().item() <= 1e-5, negative
    # rows really differ, so the comparison above could fail
    assert (batch.cond[0] - batch.cond[2]).abs().max().item() > 1e-2


def test_null_embedding_is_computed_once_and_used_for_empty_negatives(fixture_encoder):
    null = fixture_encoder.null_embedding()
    assert fixture_encoder.null_embedding() is null
    out = fixture_encoder.encode("a dog", negative="")
    assert torch.equal(out.uncond, null)
    assert not torch.equal(fixture_encoder.encode("a dog", negative="a cat").uncond, null)


def test_layer_callback_sees_every_layer(fixture_encoder, official_fixture):
    calls = []
    fixture_encoder.encode("<i> here", [official_fixture / "images" / "shapes.png"], negative="blurry",
                           callback=lambda done, total: calls.append((done, total)))
    total = len(fixture_encoder.model.layers())
    assert calls[0] == (0, total)
    assert len(calls) >= total  # vision + MLLM + aligner, at least once each
