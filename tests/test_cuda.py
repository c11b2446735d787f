"""The CUDA branches: parity with the official fixtures on the GPU, the half-precision and quantized
paths there, and the nodes' placement inside a ComfyUI that runs on the GPU.

Marked ``cuda``; without a GPU every test here skips (none passes without running). They run on
the device machine through scripts/device_check.sh (section ``cuda_tests``: ``pytest -m cuda``), on the
fixtures in tests/data/fixtures (they travel with the working tree).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from support import fixture_cases, gill_fixture_dirs
from test_gill import CLOSE as GILL_CLOSE
from test_gill import gill_args
from test_parity import assert_matches_official, encode_args, expected_outputs

from kosmosg_core.cli import main

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (scripts/device_check.sh runs it)")]

CASES = fixture_cases()
GILL_CASES = [(d, c) for d in gill_fixture_dirs() for c in json.loads((d / "cases.json").read_text())]


@pytest.fixture(autouse=True)
def full_fp32():
    """fp32 parity means fp32: no TF32 in cuDNN convolutions (on by default) or cuBLAS matmuls."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fixtures_present_for_the_gpu_run(official_fixture, gill_fixture):
    assert CASES and GILL_CASES


@pytest.mark.parametrize("fixture,case", CASES, ids=[f"{d.name}-{c['name']}" for d, c in CASES])
def test_kosmosg_matches_official_on_cuda(fixture, case, tmp_path):
    out = tmp_path / "out.safetensors"
    assert main(encode_args(fixture, case, out) + ["--device", "cuda"]) == 0
    assert_matches_official(load_file(out), expected_outputs(fixture, case), where="cuda")


def test_half_precision_on_cuda_stays_near_fp32(official_fixture):
    from kosmosg_core import load_kosmosg

    expected = load_file(official_fixture / "expected.safetensors")["wearing.cond"]
    images = [official_fixture / "images" / "noise.png", official_fixture / "images" / "shapes.png"]
    for dtype, tolerance in (("fp16", 2e-2), ("bf16", 2e-1)):
        encoder = load_kosmosg(official_fixture / "checkpoint.pt", dtype=dtype, device="cuda")
        assert encoder.device.type == "cuda" and encoder.dtype != torch.float32
        cond = encoder.encode("<i> wearing <i>", images).cond
        assert cond.device.type == "cuda"
        diff = (cond.float().cpu() - expected).abs().max().item()
        assert diff <= tolerance, f"{dtype}: max abs diff {diff:.2e}"


def test_int8_on_cuda_keeps_the_conditioning(official_fixture):
    pytest.importorskip("torchao", reason="int8 needs torchao")
    from kosmosg_core import load_kosmosg

    expected = load_file(official_fixture / "expected.safetensors")["wearing.cond"]
    images = [official_fixture / "images" / "noise.png", official_fixture / "images" / "shapes.png"]
    encoder = load_kosmosg(official_fixture / "checkpoint.pt", dtype="bf16", device="cuda", quantization="int8")
    cond = encoder.encode("<i> wearing <i>", images).cond.float().cpu()
    cosine = torch.nn.functional.cosine_similarity(cond.flatten(), expected.flatten(), dim=0).item()
    assert 0.999 <= cosine < 1.0, cosine


@pytest.mark.parametrize("fixture,case", GILL_CASES, ids=[f"{d.name}-{c['name']}" for d, c in GILL_CASES])
def test_gill_matches_official_on_cuda(fixture, case, tmp_path):
    expected = {k.split(".", 1)[1]: v for k, v in load_file(fixture / "expected.safetensors").items()
                if k.startswith(case["name"] + ".")}
    out = tmp_path / "gill.safetensors"
    assert main(["encode", "--backend", "gill", *gill_args(fixture, case, "--out", str(out), "--dump-intermediates",
                                                         "--device", "cuda")]) == 0
    got = load_file(out)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    for key in GILL_CLOSE:
        diff = (got[key] - expected[key]).abs().max().item()
        assert diff <= 1e-4, f"{key}: max abs diff {diff:.2e} on cuda"
    if case["greedy_new_tokens"]:
        text_out = tmp_path / "greedy.safetensors"
        assert main(["generate-text", *gill_args(fixture, case, "--max-new-tokens", str(case["greedy_new_tokens"]),
                                                 "--out", str(text_out), "--device", "cuda")]) == 0
        assert torch.equal(load_file(text_out)["greedy_ids"], expected["greedy_ids"])


def test_gill_kv_cache_matches_recomputation_on_cuda(gill_fixture):
    from kosmosg_core.gill import load_gill

    gill = load_gill(str(gill_fixture), str(gill_fixture / "llm"), str(gill_fixture / "vision"), dtype="bf16",
                     device="cuda")
    images = [gill_fixture / "images" / "sunset.png"]
    prompt = "a man walks his dog on the beach. <i> they reach"
    cached = gill.generate(prompt, images, max_new_tokens=12, stop_at_newline=False)
    full = gill.generate(prompt, images, max_new_tokens=12, stop_at_newline=False, use_cache=False)
    assert gill.device.type == "cuda" and cached.ids.shape[1] == 12
    assert torch.equal(cached.ids, full.ids)


@pytest.mark.parametrize("mode,layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_gill_quantized_llm_on_cuda(gill_fixture, mode, layer):
    pytest.importorskip("bitsandbytes", reason="8-bit and 4-bit loading need bitsandbytes")
    from kosmosg_core.gill import load_gill

    gill = load_gill(str(gill_fixture), str(gill_fixture / "llm"), str(gill_fixture / "vision"),
                     dtype="fp16" if mode == "8bit" else "bf16", device="cuda", quantization=mode)
    assert any(type(module).__name__ == layer for module in gill.lm.modules())
    out = gill.generate("a man walks his dog on the beach. <i> they reach", [gill_fixture / "images" / "sunset.png"],
                        max_new_tokens=4, stop_at_newline=False)
    assert out.ids.shape == (1, 4)


@pytest.fixture(scope="module")
def gpu_comfy(tmp_path_factory):
    """ComfyUI on the GPU, in this process: only if nothing booted it on the CPU here before."""
    booted = sys.modules.get("comfy.model_management")
    if booted is not None and booted.cpu_state == booted.CPUState.CPU:
        pytest.skip("ComfyUI already runs on the CPU in this process; run `pytest -m cuda` on its own")
    from kosmosg_core.comfy_host.host import ComfyHost, find_comfyui
    from kosmosg_core.comfy_host.tiny_models import write_tiny_models

    host = ComfyHost(find_comfyui(), str(tmp_path_factory.mktemp("comfy_gpu")), cpu=False)
    host.tiny_models = write_tiny_models(host.folder_paths.models_dir)
    return host


def gpu_graph(seed: int, prompt: str = "<i> wearing <i>") -> dict:
    """tests/support/comfy_graphs.py's SD graph with EmptyImage inputs: ComfyUI 0.33.0's LoadImage decodes through
    PyAV, which does not travel to the GPU machine."""
    from support.comfy_graphs import node, sd_graph

    graph = sd_graph(seed=seed, prompt=prompt)
    graph["img1"] = node("EmptyImage", width=96, height=80, batch_size=1, color=0x3366CC)
    graph["img2"] = node("EmptyImage", width=72, height=88, batch_size=1, color=0xCC9933)
    return graph


def test_nodes_load_kosmosg_on_the_gpu_and_comfyui_offloads_it(gpu_comfy):
    import comfy.model_management as mm

    result = gpu_comfy.run(gpu_graph(seed=3))
    assert result.success, result.error
    runtime = gpu_comfy.node_output("ks")
    assert runtime.encoder.dtype in (torch.float16, torch.bfloat16), runtime.encoder.dtype  # "auto" on a GPU
    tokens, extra = gpu_comfy.node_output("enc", 0)[0]
    assert tokens.dtype == torch.float32 and tokens.device == mm.intermediate_device()
    assert extra["pooled_output"].device == tokens.device
    assert runtime.patcher in mm.loaded_models()
    assert all(p.device.type == "cuda" for p in runtime.encoder.model.parameters())
    mm.unload_all_models()
    mm.soft_empty_cache()
    assert all(p.device.type == "cpu" for p in runtime.encoder.model.parameters())
    again = gpu_comfy.run(gpu_graph(seed=4, prompt="<i> beside <i>"))  # a new prompt loads it back
    assert again.success, again.error
    assert runtime.patcher in mm.loaded_models()
