"""CLI behaviour beyond parity: errors exit 2 with the message; the bench runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import REPO


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kosmosg_core", *args], cwd=REPO, capture_output=True, text=True)


def test_encode_error_is_one_clear_line(tmp_path):
    done = run_cli("encode", "--checkpoint", str(tmp_path / "checkpoint_final.pt"), "--prompt", "a dog",
                   "--out", str(tmp_path / "o.safetensors"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: checkpoint file not found") and "Traceback" not in done.stderr
    assert not (tmp_path / "o.safetensors").exists()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_bench_tiny_reports_every_figure(tmp_path):
    """Structure and signs that hold by construction, never timing luck: durations are >= 0 (a
    rounded duration may be 0), counts and sizes > 0, and the GILL extrapolation either is
    consistent (then positive) or says so and gives no estimate."""
    users = tmp_path / "checkpoint_final.pt"  # a folder of the user's: the bench works beside, never over
    users.write_bytes(b"the user's own checkpoint")
    (tmp_path / ".kosmosg-cache").mkdir()
    (tmp_path / ".kosmosg-cache" / "keep.safetensors").write_bytes(b"cached")
    done = run_cli("bench", "--size", "tiny", "--dtypes", "fp32", "--workdir", str(tmp_path), "--gill", "--int8")
    assert done.returncode == 0, done.stderr
    assert users.read_bytes() == b"the user's own checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kosmosg-cache", "checkpoint_final.pt"]
    assert [p.name for p in (tmp_path / ".kosmosg-cache").iterdir()] == ["keep.safetensors"]
    report = json.loads(done.stdout)
    assert all(run["matmul_fp32_2048_flops_per_second"] > 0 for run in report["runs"])
    gill = report["gill_generation"]
    assert "EXTRAPOLATED" in gill["label"] and isinstance(gill["consistent"], bool)
    assert set(gill["measured"]) == {"1", "2"}
    for measured in gill["measured"].values():
        assert measured["same_ids"] is True and measured["new_tokens"] == 32 and measured["context_tokens"] > 0
        for key in ("seconds_with_cache", "seconds_recompute", "tokens_per_second_with_cache", "speedup"):
            assert _number(measured[key]) and measured[key] >= 0, key
    modes = gill["extrapolated_to_32_layers"]
    assert set(modes) == {"with_cache", "recompute"}
    for figures in modes.values():
        assert isinstance(figures["consistent"], bool)
        assert _number(figures["seconds_per_layer"]) and figures["seconds_per_layer"] >= 0
        assert _number(figures["seconds_fixed"]) and figures["seconds_fixed"] >= 0
        if figures["consistent"]:
            assert figures["seconds_32_layers"] > 0 and figures["tokens_per_second_32_layers"] > 0
        else:
            assert figures["seconds_32_layers"] is None and figures["tokens_per_second_32_layers"] is None
            assert "inconsistent" in figures["note"]
    assert gill["consistent"] == all(figures["consistent"] for figures in modes.values())
    assert (gill["speedup_32_layers"] > 0) if gill["consistent"] else (gill["speedup_32_layers"] is None)
    plain, int8 = report["runs"]
    assert plain["file"] == int8["file"] == "checkpoint_final.safetensors" and int8["quantization"] == "int8"
    for key in ("official_pt_first_start_seconds", "official_pt_second_start_seconds", "second_over_first_start",
                "load_over_plain_read", "peak_rss_over_weight_bytes", "fresh_memory_seconds_for_the_weights"):
        assert _number(plain[key]) and plain[key] >= 0, key
    assert plain["parameters"] > 0 and plain["weight_bytes"] > 0
    converted = plain["converted_in_this_dtype"]  # the cache written at the first start, in fp32
    assert converted["load_over_plain_read"] >= 0 and converted["bytes"] >= 4 * plain["parameters"]
    assert int8["weight_bytes_over_fp16"] > 0  # not < 1: a tiny model's per-channel scales weigh in
    for run in (plain, int8):
        assert set(run["encode"]) == {"text_only", "one_image", "four_images"}
        for encode in run["encode"].values():
            assert encode["flops"] > 0 and encode["seconds_median"] >= 0 and encode["flops_over_matmul_fp32"] >= 0
        assert run["encode"]["four_images"]["tokens"] > run["encode"]["one_image"]["tokens"]


@pytest.mark.parametrize("shallow,deep,consistent", [
    (1.0, 2.0, True),  # 1 s per layer, nothing fixed
    (2.0, 3.0, True),  # 1 s per layer, 1 s fixed
    (20.0, 7.71, False),  # the deeper model timed faster (a busy machine): per-layer cost < 0
    (1.0, 1.0, False),  # no per-layer cost at all
    (1.0, 5.0, False),  # fixed part < 0
])
def test_gill_extrapolation_is_an_estimate_or_says_it_is_inconsistent(shallow, deep, consistent):
    from kosmosg_core.bench import extrapolate_layers

    figures = extrapolate_layers(shallow, deep, (1, 2))
    assert figures["consistent"] is consistent
    assert figures["seconds_per_layer"] >= 0 and 0 <= figures["seconds_fixed"] <= shallow
    if consistent:
        per_layer = deep - shallow
        assert figures["seconds_32_layers"] == round(shallow - per_layer + 32 * per_layer, 4) > 0
    else:
        assert figures["seconds_32_layers"] is None and "_seconds" not in figures and "inconsistent" in figures["note"]
