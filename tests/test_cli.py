"""CLI behaviour beyond parity: errors exit 2 with the message; the bench runs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kosmosg_core", *args], cwd=REPO, capture_output=True, text=True)


def test_encode_error_is_one_clear_line(tmp_path):
    done = run_cli("encode", "--checkpoint", str(tmp_path / "checkpoint_final.pt"), "--prompt", "a dog",
                   "--out", str(tmp_path / "o.safetensors"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: checkpoint file not found") and "Traceback" not in done.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_bench_tiny_reports_every_figure(tmp_path):
    done = run_cli("bench", "--size", "tiny", "--dtypes", "fp32", "--workdir", str(tmp_path), "--gill", "--int8")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert all(run["matmul_fp32_2048_flops_per_second"] > 0 for run in report["runs"])
    gill = report["gill_generation"]
    assert "EXTRAPOLATED" in gill["label"] and gill["extrapolated_to_32_layers"]["with_cache"]["seconds_32_layers"] > 0
    assert all(m["same_ids"] and m["new_tokens"] == 32 for m in gill["measured"].values())
    plain, int8 = report["runs"]
    assert plain["file"] == int8["file"] == "checkpoint_final.safetensors" and int8["quantization"] == "int8"
    for key in ("official_pt_first_start_seconds", "official_pt_second_start_seconds", "second_over_first_start",
                "load_over_plain_read", "peak_rss_over_weight_bytes", "parameters"):
        assert plain[key] > 0, key
    converted = plain["converted_in_this_dtype"]  # the cache written at the first start, in fp32
    assert converted["load_over_plain_read"] > 0 and converted["bytes"] >= 4 * plain["parameters"]
    assert plain["fresh_memory_seconds_for_the_weights"] > 0
    assert 0 < int8["weight_bytes_over_fp16"]
    for run in (plain, int8):
        assert set(run["encode"]) == {"text_only", "one_image", "four_images"}
        for encode in run["encode"].values():
            assert encode["seconds_median"] > 0 and encode["flops"] > 0 and encode["flops_over_matmul_fp32"] > 0
        assert run["encode"]["four_images"]["tokens"] > run["encode"]["one_image"]["tokens"]
