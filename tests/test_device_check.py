"""scripts/device_check.sh, the prepared GPU check, run here in its --tiny CPU mode so it cannot rot;
its guards (an error or an overrun in one section is recorded and the next section runs); the
report's arithmetic; the README rows its VRAM estimates come from; the PyAV stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import REPO

from kosmosg_core.device_check import report
from kosmosg_core.device_check.cuda_tests import summarize

SCRIPT = REPO / "scripts" / "device_check.sh"


def script_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "KOSMOSG_DEVICE_CHECK_FAULT")}
    # nothing carried: the tiny run uses this interpreter's packages and the ComfyUI the tests use
    env.update(PYTHON=sys.executable, KOSMOSG_DEVICE_DIR=str(tmp_path / "nothing-carried"), **extra)
    return env


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("device_check")
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SCRIPT), "--tiny", "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=REPO, env=script_env(tmp_path), capture_output=True, text=True, timeout=400)
    return done, json.loads((out / "device_check.json").read_text()), (out / "device_check.log").read_text()


def test_tiny_run_finishes_every_section(tiny_run):
    done, doc, log = tiny_run
    assert done.returncode == 0, log[-3000:]
    assert doc["finished"] and doc["mode"] == "tiny" and doc["device"] == "cpu"
    assert {name: s["status"] for name, s in doc["sections"].items()} == dict.fromkeys(
        ["env", "kosmosg", "comfy", "gill", "comfy_dynamic", "cuda_tests"], "ok"), log[-3000:]
    for name in doc["sections"]:
        assert f"== {name}: ok" in log  # progress lines, as they happen
    assert doc["wall_seconds"] < 150, "the tiny run is meant to take well under a minute"


def test_tiny_run_measures_kosmosg(tiny_run):
    kosmos = tiny_run[1]["sections"]["kosmosg"]
    assert kosmos["files"]["pt_bytes"] > 0 and kosmos["files"]["safetensors_bytes"] > 0
    loaded = kosmos["safetensors-fp32"]
    assert loaded["load_seconds"] > 0 and loaded["weight_bytes"] > 0 and loaded["output_finite"]
    for prompt in ("encode_2_images", "encode_4_images"):
        assert loaded[prompt]["median_ms"] > 0 and loaded[prompt]["clock"] == "wall clock"
    assert kosmos["safetensors-bf16"]["weight_bytes"] < 0.51 * loaded["weight_bytes"]  # a few buffers stay fp32
    assert kosmos["safetensors-bf16-int8"]["status"] in ("ok", "skipped")
    assert kosmos["fp8"]["status"] == "not offered"


def test_tiny_run_generates_inside_comfyui_with_both_encoders(tiny_run):
    comfy = tiny_run[1]["sections"]["comfy"]
    assert comfy["sd15"]["real_layout"]["detected_as"] == "SD15"  # the real-size layout, checked on meta tensors
    assert comfy["sd15"]["real_layout"]["parameters"] == {"unet": 859_520_964, "clip": 123_060_480, "vae": 83_653_863}
    for kind in ("clip_text", "kosmos_g"):
        assert comfy[kind]["status"] == "ok" and len(comfy[kind]["runs_seconds"]) == comfy["settings"]["runs"]
        assert comfy[kind]["loaded_models"]
    assert isinstance(comfy["overhead_percent"], float)
    assert any(m["model"] == "ModuleContainer" for m in comfy["kosmos_g"]["loaded_models"])  # the pack's ModelPatcher
    caps = [key for key in comfy if key.startswith("vram_cap_")]
    assert len(caps) == 3
    for key in caps:  # on the CPU the cap is not applied, but the path runs
        assert comfy[key]["status"] == "ok" and comfy[key]["success"] and comfy[key]["cap_applied"] is False


def test_tiny_run_says_why_dynamic_vram_is_not_on(tiny_run):
    control = tiny_run[1]["sections"]["comfy_dynamic"]["dynamic_vram_control"]
    assert control["enabled"] is False and "CUDA" in control["reason"]


def test_tiny_run_times_gill_with_and_without_the_cache(tiny_run):
    gill = tiny_run[1]["sections"]["gill"]
    timed = gill["fp32"]
    assert timed["same_ids"] and timed["tokens_per_second_with_cache"] > 0 and timed["tokens_per_second_recompute"] > 0
    assert timed["context_tokens"] > 100
    for mode in ("8bit", "4bit"):
        assert gill[mode]["status"] == "skipped" and "CUDA" in gill[mode]["reason"]


def test_tiny_run_cuda_tests_all_skip_without_a_gpu(tiny_run):
    cuda = tiny_run[1]["sections"]["cuda_tests"]
    assert cuda["collected"] >= 10
    assert cuda["skipped"] == cuda["collected"] and cuda["passed"] == 0, cuda  # skipped, never passed vacuously


def test_tiny_run_reports_targets_and_estimates(tiny_run):
    doc = tiny_run[1]
    assert doc["readme_estimates_gb"]["kosmosg_encode_vram_bf16"] == 4.0
    assert doc["verdicts"] and all(v["pass"] is None and "tiny" in v["note"] for v in doc["verdicts"])
    assert doc["measured"]["comfy_overhead_percent"] == doc["sections"]["comfy"]["overhead_percent"]


def test_an_error_or_overrun_in_one_section_is_recorded_and_the_next_runs(tmp_path):
    out = tmp_path / "out"
    env = script_env(tmp_path, KOSMOSG_DEVICE_CHECK_FAULT="kosmosg:raise,gill:hang")
    done = subprocess.run([sys.executable, "-m", "kosmosg_core.device_check", "--tiny", "--out", str(out),
                           "--sections", "kosmosg,gill,env", "--budget", "gill=8"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-2000:]
    sections = json.loads((out / "device_check.json").read_text())["sections"]
    assert sections["kosmosg"]["status"] == "error"
    assert "injected fault" in sections["kosmosg"]["error"] and "\n" not in sections["kosmosg"]["error"]
    assert sections["gill"]["status"] == "timeout" and sections["gill"]["before_hang"] is True  # partial results kept
    assert sections["gill"]["seconds"] < 30
    assert sections["env"]["status"] == "ok" and sections["env"]["python"]


def test_usage_without_out():
    done = subprocess.run(["bash", str(SCRIPT), "--tiny"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "--out DIR" in done.stderr


def test_readme_estimates_come_from_the_readme_rows():
    rows = (REPO / "README.md").read_text().splitlines()
    for key, row, text, _value in report.README_ESTIMATES:
        matching = [line for line in rows if line.startswith(row)]
        assert matching, f"{key}: no README row starts with {row!r}"
        assert any(text in line for line in matching), f"{key}: the README row no longer says {text!r}"


def test_verdicts_compare_real_figures_with_the_targets():
    gib = 1e9
    sections = {
        "kosmosg": {"safetensors-bf16": {"encode_2_images": {"median_ms": 12.5}, "device_bytes_after_load": 3.78 * gib,
                                         "peak_device_bytes_encoding_4_images": 4.5 * gib}},
        "comfy": {"overhead_percent": 7.0},
        "gill": {"bf16": {"device_bytes_after_load": 13.9 * gib}},
    }
    verdicts = {v["target"]: v for v in report.verdicts(sections, tiny=False)}
    encode = next(v for t, v in verdicts.items() if t.startswith("2-image encode"))
    overhead = next(v for t, v in verdicts.items() if t.startswith("KosmosGEncode overhead"))
    assert encode["pass"] is True and overhead["pass"] is False
    by_key = {v["target"].split("(")[-1].rstrip(")"): v for v in verdicts.values() if "readme_says" in v}
    assert by_key["kosmosg_weights_bf16"]["pass"] is True and by_key["kosmosg_weights_bf16"]["ratio"] == 1.0
    assert by_key["kosmosg_encode_vram_bf16"]["pass"] is False  # 4.5 GB vs the README's 4.0: 12.5 % over
    assert by_key["gill_vram_bf16"]["pass"] is True
    assert by_key["gill_vram_8bit"]["pass"] is None and by_key["gill_vram_8bit"]["measured_gb"] is None


def test_junit_summary_counts_and_names_failures(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" tests="3">'
        '<testcase classname="test_cuda" name="test_a"/>'
        '<testcase classname="test_cuda" name="test_b">'
        '<failure message="assert 1 == 2&#10;more">trace</failure></testcase>'
        '<testcase classname="test_cuda" name="test_c"><skipped message="needs a CUDA GPU"/></testcase>'
        "</testsuite></testsuites>")
    summary = summarize(str(xml))
    assert (summary["collected"], summary["passed"], summary["failed"], summary["skipped"]) == (3, 1, 1, 1)
    assert summary["failures"] == [{"test": "test_cuda::test_b", "message": "assert 1 == 2"}]
    assert summary["skip_reasons"] == {"needs a CUDA GPU": 1}


def test_pyav_stand_in_imports_everything_and_refuses_any_use():
    code = ("import av\nfrom av.container import InputContainer\nfrom av.video.reformatter import ColorPrimaries\n"
            "assert ColorPrimaries.BT709 is ColorPrimaries\n"
            "for call in (lambda: av.open('x.mp4'), lambda: InputContainer(), lambda: av.AudioFrame()):\n"
            "    try:\n        call()\n"
            "    except RuntimeError as exc:\n        assert 'PyAV is not installed' in str(exc)\n"
            "    else:\n        raise SystemExit('no error')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "scripts" / "device_stubs")})
    assert done.returncode == 0, done.stderr
