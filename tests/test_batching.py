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
    for i, (prompt, imgs, negative) in enumerate(zip(prompts, image_lists, negatives, strict=True)):
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


def test_int8_weights_keep_the_conditioning(official_fixture, fixture_encoder):
    """Weight-only int8 (torchao): measured cosine >= 0.9998 to fp32 on every fixture case."""
    import json

    from kosmosg_core import load_kosmosg
    from kosmosg_core.weights.quantization import resident_weight_bytes

    int8 = load_kosmosg(official_fixture / "checkpoint.pt", quantization="int8")
    fp32_bytes = resident_weight_bytes(fixture_encoder.model)
    assert resident_weight_bytes(int8.model) < fp32_bytes
    for case in json.loads((official_fixture / "cases.json").read_text()):
        images = [official_fixture / "images" / name for name in case["images"]]
        a = fixture_encoder.encode(case["prompt"], images, case["negative"])
        b = int8.encode(case["prompt"], images, case["negative"])
        cosine = torch.nn.functional.cosine_similarity(a.cond.flatten(), b.cond.flatten(), dim=0)
        assert 0.999 <= cosine < 1.0, case["name"]  # < 1: the weights really changed
