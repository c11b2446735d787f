"""Section ``env``: the machine, the versions in use (the carried ones where they were carried), and
the dense bf16 matmul rate, the ceiling the encode latency is read against."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys

from .common import Recorder, latency, one_line

PACK_TRANSFORMERS = (5, 23)  # requirements.txt's lower bound: older versions give different Kosmos-G conditioning


def _version(module: str) -> dict:
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (absent, or present but broken: both are findings)
        return {"available": False, "error": one_line(exc)}
    return {"available": True, "version": getattr(imported, "__version__", "?"),
            "path": os.path.dirname(getattr(imported, "__file__", None) or "")}


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not run: {one_line(exc)}"
    return (done.stdout or done.stderr).strip()[:400]


def _matmul(device: str, tiny: bool) -> dict:
    import torch

    size = 512 if tiny else 8192
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = latency(lambda: a @ b, repeats=3 if tiny else 10, warmup=1 if tiny else 3, device=device)
    return {"size": size, "dtype": str(dtype), **timing,
            "tflops": round(2 * size**3 / (timing["median_ms"] / 1e3) / 1e12, 1)}


def run(rec: Recorder) -> None:
    import torch

    device = rec.settings["device"]
    rec.put("python", sys.version.split()[0])
    rec.put("platform", platform.platform())
    rec.put("cpu_count", os.cpu_count())
    rec.put("torch", {"version": torch.__version__, "cuda": torch.version.cuda,
                      "cudnn": torch.backends.cudnn.version()})
    packages = {name: _version(name) for name in ("transformers", "tokenizers", "huggingface_hub", "safetensors",
                                                   "accelerate", "torchao", "bitsandbytes", "comfy_kitchen",
                                                   "comfy_aimdo", "torchsde", "av")}
    rec.put("packages", packages)
    tv = packages["transformers"].get("version", "0")
    rec.put("transformers_meets_pack_minimum",
            tuple(int(p) for p in tv.split(".")[:2] if p.isdigit()) >= PACK_TRANSFORMERS)
    rec.put("pythonpath", os.environ.get("PYTHONPATH", ""))
    rec.put("comfyui_path", os.environ.get("COMFYUI_PATH"))
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        rec.put("gpu", {"name": props.name, "capability": f"{props.major}.{props.minor}",
                        "total_memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count})
        rec.put("nvidia_smi", _nvidia_smi())
    else:
        rec.put("gpu", None)
    rec.say(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {tv}, device {device}")
    result = rec.step("matmul", lambda: _matmul(device, rec.tiny))
    if result:
        rec.say(f"matmul {result['size']}^3 {result['dtype']}: {result['tflops']} TFLOP/s")
