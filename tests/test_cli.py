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
    done = run_cli("bench", "--size", "tiny", "--dtypes", "fp32", "--workdir", str(tmp_path), "--gill")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["matmul_fp32_2048_flops_per_second"] > 0
    assert {r["file"] for r in report["runs"]} == {"checkpoint_final.pt", "checkpoint_final.safetensors"}
    gill = report["gill_generation"]
    assert gill["same_ids"] and gill["new_tokens"] == 32 and gill["seconds_with_cache"] > 0
    for run in report["runs"]:
        for key in ("parameters", "load_seconds", "load_over_plain_read", "peak_rss_over_weight_bytes",
                    "encode_seconds_median", "encode_flops", "encode_flops_over_matmul_fp32"):
            assert run[key] > 0, key
