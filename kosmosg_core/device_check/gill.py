"""Section ``gill``: GILL at the released sizes with random weights, through the pack's own loader.

The OPT-6.7B folder (32 layers, width 4096, FFN 16384, 32 heads; fp16 safetensors), a CLIP ViT-L/14
vision folder and a GILL release folder (heads at the release size) are written once, the big
weights made on the GPU (a CPU takes minutes for them). ``load_gill`` reads them as it reads the
real files (its quantized modes need files: transformers quantizes while loading). Per mode
(bf16; 8-bit and 4-bit with bitsandbytes): load time, device bytes, and greedy tokens per second
after the VIST story prompt with and without the KV cache (:func:`kosmosg_core.bench.time_gill_generation`).
The embedding is resized to OPT-6.7B's vocabulary after loading, as the bench does, so the LM head
costs what it really costs (the random tokenizer is small).
"""

from __future__ import annotations

import functools
import os
import time

from .common import Recorder, free_device_memory, gb, one_line, reset_peak, vram

REAL = {"opt": dict(hidden=4096, layers=32, ffn=16384, heads=32),
        "clip": dict(hidden=1024, image_size=224, layers=24, heads=16)}
TINY = {"opt": dict(hidden=128, layers=2, ffn=512, heads=4), "clip": dict(hidden=64, image_size=56, layers=2, heads=1)}


def heads_config(tiny: bool):
    from ..gill.modeling import GILLHeadsConfig
    from ..gill.synthetic import tiny_heads_config

    if tiny:
        return tiny_heads_config(llm_dim=TINY["opt"]["hidden"], vision_dim=TINY["clip"]["hidden"])
    return GILLHeadsConfig(llm_dim=4096, vision_dim=1024, n_visual_tokens=4, ret_emb_dim=256, mapper_dim=512,
                           mapper_ffn=2048, mapper_encoder_layers=4, mapper_decoder_layers=4, num_clip_tokens=77,
                           gen_emb_dim=768, num_img_tokens=8)


def write_folders(work: str, tiny: bool, device: str) -> dict:
    import torch

    from ..gill.synthetic import write_clip_vision, write_opt, write_release

    root = os.path.join(work, "gill")
    paths = {"release": os.path.join(root, "gill_opt"), "llm": os.path.join(root, "opt-6.7b"),
             "vision": os.path.join(root, "clip-vit-large-patch14")}
    sizes = TINY if tiny else REAL
    started = time.perf_counter()
    write_release(paths["release"], heads_config(tiny))
    write_opt(paths["llm"], dtype=torch.float16, device=device, **sizes["opt"])
    free_device_memory()
    write_clip_vision(paths["vision"], dtype=torch.float16, device=device, **sizes["clip"])
    free_device_memory()
    folder_bytes = {name: sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                    for name, path in paths.items()}
    return {"paths": paths, "write_seconds": round(time.perf_counter() - started, 2), "bytes": folder_bytes,
            "sizes": sizes}


def measure_mode(paths: dict, mode: str, device: str, tiny: bool) -> dict:
    from ..bench import GILL_VOCAB, time_gill_generation
    from ..gill import load_gill

    dtype = {"bf16": "bf16", "fp32": "fp32", "8bit": "fp16", "4bit": "bf16"}[mode]
    quantization = mode if mode in ("8bit", "4bit") else "none"
    free_device_memory()
    reset_peak(device)
    before = vram(device)["allocated_bytes"] or 0
    started = time.perf_counter()
    gill = load_gill(paths["release"], paths["llm"], paths["vision"], dtype=dtype, device=device,
                     quantization=quantization)
    gill.lm.resize_token_embeddings(GILL_VOCAB, mean_resizing=False)
    load_seconds = time.perf_counter() - started
    loaded = vram(device)
    reset_peak(device)
    repeats = 1 if tiny or quantization != "none" else 3  # bitsandbytes decodes several times slower: one run each
    report, _ = time_gill_generation(gill, new_tokens=8 if tiny else 32, repeats=repeats)
    peak = vram(device)
    result = {
        "dtype": dtype, "quantization": quantization, "load_seconds": round(load_seconds, 2),
        "lm_parameters": sum(p.numel() for p in gill.lm.parameters()),
        "device_bytes_after_load": None if loaded["allocated_bytes"] is None else loaded["allocated_bytes"] - before,
        "peak_device_bytes_generating":
            None if peak["peak_allocated_bytes"] is None else peak["peak_allocated_bytes"] - before,
        **report,
    }
    del gill
    free_device_memory()
    return result


def _bitsandbytes_problem(device: str) -> str | None:
    if device != "cuda":
        return "bitsandbytes' 8-bit and 4-bit modes need a CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"bitsandbytes does not import: {one_line(exc)}"
    return None


def run(rec: Recorder) -> None:
    device, tiny = rec.settings["device"], rec.tiny
    folders = rec.step("files", lambda: write_folders(rec.settings["work"], tiny, device), need=0 if tiny else 60)
    if not folders:
        return
    rec.say(f"wrote the GILL folders in {folders['write_seconds']:.1f} s ({gb(folders['bytes']['llm'])} GB of LLM)")
    first = "fp32" if device == "cpu" else "bf16"
    for mode in (first, "8bit", "4bit"):
        problem = _bitsandbytes_problem(device) if mode != first else None
        if problem:
            rec.put(mode, {"status": "skipped", "reason": problem})
            continue
        measure = functools.partial(measure_mode, folders["paths"], mode, device, tiny)
        result = rec.step(mode, measure, need=0 if tiny else 35)
        if result:
            rec.say(f"{mode}: loaded in {result['load_seconds']:.1f} s, {gb(result['device_bytes_after_load'])} GB; "
                    f"{result['tokens_per_second_with_cache']} tok/s with the KV cache, "
                    f"{result['tokens_per_second_recompute']} without")
