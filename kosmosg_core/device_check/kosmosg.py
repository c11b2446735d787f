"""Section ``kosmosg``: the released size (1.888 B parameters) with random weights in the official
format, loaded per dtype onto the device: load time, resident bytes, VRAM, and the latency of a
2-image encode (median of 20 after warm-up, CUDA events) and a 4-image one; int8 (torchao) if it
imports. The pack offers no fp8 option, which the results say rather than measure something else.
"""

from __future__ import annotations

import functools
import os
import time

from .common import Recorder, free_device_memory, gb, latency, reset_peak, vram

PT, ST = "checkpoint_final.pt", "kosmos-g.safetensors"
TWO_IMAGES = "<i> wearing <i>"
FOUR_IMAGES = "<i> and <i> wearing <i> in front of <i>, a photo"


def ensure_files(work: str, tiny: bool, say=print) -> dict:
    """The official-format ``.pt`` (fp16, as released), its tokenizer and the converted ``.safetensors``
    under ``work/kosmos_g``; written once per run (the ComfyUI section reuses them)."""
    from ..kosmosg.convert import convert
    from ..kosmosg.synthetic import (
        dict_lines_for,
        official_size,
        tiny_size,
        write_official_checkpoint,
        write_tiny_tokenizer,
    )

    folder = os.path.join(work, "kosmos_g")
    paths = {"pt": os.path.join(folder, PT), "safetensors": os.path.join(folder, ST), "tokenizer": folder}
    if os.path.isfile(paths["safetensors"]):
        return {"paths": paths}
    os.makedirs(folder, exist_ok=True)
    config = tiny_size(400, 768) if tiny else official_size()
    write_tiny_tokenizer(folder, dict_lines=dict_lines_for(config.vocab_size))
    started = time.perf_counter()
    write_official_checkpoint(paths["pt"], config)
    written = time.perf_counter() - started
    say(f"wrote the official-format checkpoint ({os.path.getsize(paths['pt']) / 1e9:.2f} GB) in {written:.1f} s")
    started = time.perf_counter()
    convert(paths["pt"], paths["safetensors"], tokenizer=folder)
    converted = time.perf_counter() - started
    return {"paths": paths, "generate_pt_seconds": round(written, 2), "pt_bytes": os.path.getsize(paths["pt"]),
            "convert_seconds": round(converted, 2), "safetensors_bytes": os.path.getsize(paths["safetensors"])}


def _images(count: int, tiny: bool) -> list:
    import numpy as np
    from PIL import Image

    size = 64 if tiny else 512
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 16 * i, 3), dtype=np.uint8)) for i in range(count)]


def measure_load(paths: dict, file: str, dtype: str, device: str, tiny: bool, encode: bool,
                 quantization: str = "none") -> dict:
    from ..kosmosg.loading import load_kosmosg
    from ..weights.quantization import resident_weight_bytes

    free_device_memory()
    reset_peak(device)
    before = vram(device)["allocated_bytes"] or 0
    started = time.perf_counter()
    encoder = load_kosmosg(paths[file], paths["tokenizer"], dtype=dtype, device=device, cache_converted=False,
                           quantization=quantization)
    after = vram(device)
    result = {
        "file": os.path.basename(paths[file]), "dtype": dtype, "quantization": quantization,
        "load_seconds": round(time.perf_counter() - started, 3),
        "parameters": sum(p.numel() for p in encoder.model.parameters()),
        "weight_bytes": resident_weight_bytes(encoder.model),
        "device_bytes_after_load": None if after["allocated_bytes"] is None else after["allocated_bytes"] - before,
        "peak_device_bytes_during_load":
            None if after["peak_allocated_bytes"] is None else after["peak_allocated_bytes"] - before,
    }
    if encode:
        two, four = _images(2, tiny), _images(4, tiny)
        repeats, warmup = (2, 1) if tiny else (20, 3)
        encode_two = functools.partial(encoder.encode, TWO_IMAGES, two)
        result["encode_2_images"] = latency(encode_two, repeats, warmup, device)
        reset_peak(device)
        encode_four = functools.partial(encoder.encode, FOUR_IMAGES, four)
        result["encode_4_images"] = latency(encode_four, 1 if tiny else 5, 0 if tiny else 1, device)
        peak = vram(device)["peak_allocated_bytes"]
        # what the README estimates as "VRAM while encoding": weights + activations of a 4-image prompt
        result["peak_device_bytes_encoding_4_images"] = None if peak is None else peak - before
        result["output_finite"] = bool(encoder.encode(TWO_IMAGES, two).cond.isfinite().all())
        del encode_two, encode_four  # they hold the encoder too
    del encoder
    free_device_memory()
    return result


def _torchao_problem() -> str | None:
    try:
        from ..weights.quantization import import_torchao

        import_torchao()
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0][:300]
    return None


def run(rec: Recorder) -> None:
    device, tiny, work = rec.settings["device"], rec.tiny, rec.settings["work"]
    files = rec.step("files", lambda: ensure_files(work, tiny, rec.say), need=0 if tiny else 60)
    if not files:
        return
    paths = files["paths"]
    if tiny:
        plan = [("pt", "fp32", False), ("safetensors", "fp32", True), ("safetensors", "bf16", False)]
    else:
        plan = [("pt", "bf16", False), ("pt", "fp16", False), ("safetensors", "bf16", True),
                ("safetensors", "fp16", True), ("safetensors", "fp32", True)]
    for file, dtype, encode in plan:
        key = f"{file}-{dtype}"
        measure = functools.partial(measure_load, paths, file, dtype, device, tiny, encode)
        result = rec.step(key, measure, need=0 if tiny else 15)
        if result:
            line = f"{key}: loaded in {result['load_seconds']:.2f} s, {gb(result['weight_bytes'])} GB of weights"
            if encode:
                line += f"; 2-image encode median {result['encode_2_images']['median_ms']:.1f} ms"
            rec.say(line)
    problem = _torchao_problem()
    if problem:
        rec.put("safetensors-bf16-int8", {"status": "skipped", "reason": f"torchao: {problem}"})
    else:
        result = rec.step("safetensors-bf16-int8",
                          lambda: measure_load(paths, "safetensors", "bf16", device, tiny, True, quantization="int8"),
                          need=0 if tiny else 25)
        if result:
            rec.say(f"int8: {gb(result['weight_bytes'])} GB, "
                    f"2-image encode {result['encode_2_images']['median_ms']:.1f} ms")
    rec.put("fp8", {"status": "not offered",
                    "reason": "the pack's quantization options are none and int8 "
                              "(kosmosg_core.weights.quantization.QUANTIZATIONS); no fp8 path to measure"})
