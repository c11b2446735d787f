"""Section ``comfy``: SD 1.5 generation inside ComfyUI (the runner's in-process host, ComfyUI's own
executor and model management), the same sampler settings conditioned by CLIPTextEncode and by
KosmosGEncode (2 images): median wall time of the prompt -> overhead in percent, peak VRAM of each;
then the Kosmos-G prompt with ComfyUI seeing less free VRAM than the Kosmos-G encoder needs.

Each timed run changes the prompt text, so the encode node and the sampler run again while the
loaders stay cached (a user editing the prompt). The VRAM cap is a real one: a ballast tensor takes
the rest of the card, so ComfyUI reads the capped free memory and torch fails past it. The pack
full-loads its encoders (``force_full_load``); whatever happens under the cap is recorded as it is.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time

from .common import Recorder, free_device_memory, gb, one_line, reset_peak, vram
from .kosmosg import ensure_files

SD15_FILE = "sd15-random.safetensors"
CAPS_GB = (("kosmos_g", 3.0), ("kosmos_g", 5.0), ("clip_text", 3.0))  # 3.0 < Kosmos-G fp16 (3.78) < 5.0 < + U-Net


def node(kind: str, **inputs) -> dict:
    return {"class_type": kind, "inputs": inputs}


def graph(kind: str, index: int, size: int, steps: int, kosmos_file: str) -> dict:
    """One text-to-image prompt: ``kind`` clip_text or kosmos_g conditions the same sampler."""
    prompt = {
        "ckpt": node("CheckpointLoaderSimple", ckpt_name=SD15_FILE),
        "latent": node("EmptyLatentImage", width=size, height=size, batch_size=1),
        "decode": node("VAEDecode", samples=["sampler", 0], vae=["ckpt", 2]),
        "save": node("SaveImage", images=["decode", 0], filename_prefix=f"device_check_{kind}"),
    }
    if kind == "clip_text":
        prompt["pos"] = node("CLIPTextEncode", clip=["ckpt", 1],
                             text=f"a photo of a dog wearing a red hat, take {index}")
        prompt["neg"] = node("CLIPTextEncode", clip=["ckpt", 1], text="")
        positive, negative = ["pos", 0], ["neg", 0]
    else:
        prompt["ks"] = node("KosmosGLoader", checkpoint=kosmos_file, dtype="auto", device="auto")
        # EmptyImage, not LoadImage: ComfyUI 0.33.0's LoadImage decodes through PyAV, which cannot travel to the
        # GPU machine (36 MB); Kosmos-G resizes every image to 224 x 224, so the content does not change the cost
        prompt["img1"] = node("EmptyImage", width=size, height=size, batch_size=1, color=0x3366CC)
        prompt["img2"] = node("EmptyImage", width=size + 128, height=size, batch_size=1, color=0xCC9933)
        prompt["enc"] = node("KosmosGEncode", kosmos_g=["ks", 0], prompt=f"<i> wearing <i>, take {index}", negative="",
                             image_1=["img1", 0], image_2=["img2", 0])
        positive, negative = ["enc", 0], ["enc", 1]
    prompt["sampler"] = node("KSampler", model=["ckpt", 0], seed=7, steps=steps, cfg=7.5, sampler_name="euler",
                             scheduler="normal", positive=positive, negative=negative, latent_image=["latent", 0],
                             denoise=1.0)
    return prompt


def loaded_models() -> list[dict]:
    import comfy.model_management as mm

    found = []
    for patcher in mm.loaded_models():
        entry = {"model": type(getattr(patcher, "model", None)).__name__,
                 "device": str(getattr(patcher, "load_device", "?"))}
        for name in ("model_size", "loaded_size"):
            try:
                entry[f"{name}_bytes"] = int(getattr(patcher, name)())
            except Exception:  # noqa: BLE001  (older/newer ModelPatcher without it)
                entry[f"{name}_bytes"] = None
        found.append(entry)
    return found


def unload_everything() -> None:
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()
    free_device_memory()


def timed_family(host, kind: str, settings: dict, index0: int) -> dict:
    """First run (loads onto the device) then ``runs`` timed ones, each with a new prompt text."""
    device = settings["device"]
    unload_everything()
    reset_peak(device)
    before = vram(device)["allocated_bytes"] or 0
    seconds = []
    for index in range(settings["runs"] + 1):
        started = time.perf_counter()
        result = host.run(graph(kind, index0 + index, settings["size"], settings["steps"], settings["kosmos_file"]))
        seconds.append(time.perf_counter() - started)
        if not result.success:
            raise RuntimeError(f"{kind} prompt failed: {result.error}")
    peak = vram(device)
    return {
        "first_run_seconds": round(seconds[0], 3),
        "runs_seconds": [round(s, 3) for s in seconds[1:]],
        "median_seconds": round(statistics.median(seconds[1:]), 4),
        "peak_device_bytes": None if peak["peak_allocated_bytes"] is None else peak["peak_allocated_bytes"] - before,
        "peak_reserved_bytes": peak["peak_reserved_bytes"],
        "loaded_models": loaded_models(),
    }


def capped_run(host, kind: str, cap_gb: float, settings: dict, index: int) -> dict:
    """One prompt with ComfyUI seeing ``cap_gb`` of free VRAM (a ballast tensor holds the rest)."""
    import torch

    device = settings["device"]
    unload_everything()
    ballast = None
    applied = device == "cuda"
    if applied:
        free, _total = torch.cuda.mem_get_info()
        ballast = torch.empty(max(0, free - int(cap_gb * 1e9)), dtype=torch.uint8, device="cuda")
    seen = gb(_comfy_free()) if applied else None
    reset_peak(device)
    before = vram(device)["allocated_bytes"] or 0
    started = time.perf_counter()
    try:
        result = host.run(graph(kind, index, settings["size"], settings["steps"], settings["kosmos_file"]))
        outcome = {"success": result.success, "error": None if result.success else (result.error or "failed")[:400]}
    except BaseException as exc:  # noqa: BLE001  (an OOM escaping the executor is an outcome here, not a crash)
        outcome = {"success": False, "error": one_line(exc)}
    peak = vram(device)
    report = {
        "cap_applied": applied,
        "free_gb_seen_by_comfyui_before": seen,
        "seconds": round(time.perf_counter() - started, 3),
        **outcome,
        "peak_device_bytes_over_ballast":
            None if peak["peak_allocated_bytes"] is None else peak["peak_allocated_bytes"] - before,
        "loaded_models": loaded_models(),
    }
    del ballast
    unload_everything()
    return report


def _comfy_free() -> int | None:
    import comfy.model_management as mm

    try:
        return int(mm.get_free_memory(mm.get_torch_device()))
    except Exception:  # noqa: BLE001
        return None


def _place(source: str, folder: str) -> str:
    """A hard link (or copy) of ``source`` in a model folder: the pack refuses links that leave it."""
    import shutil

    os.makedirs(folder, exist_ok=True)
    dest = os.path.join(folder, os.path.basename(source))
    if not os.path.exists(dest):
        try:
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)
    return os.path.basename(dest)


def run(rec: Recorder, dynamic=None) -> None:
    """``dynamic``: None (the runner as it is), or the (before boot, after boot) pair of functions of
    :mod:`.comfy_dynamic` that turn on ComfyUI 0.33's DynamicVRAM as its main.py does."""
    from ..comfy_host.host import ComfyHost, find_comfyui

    tiny, work, device = rec.tiny, rec.settings["work"], rec.settings["device"]
    kosmos = rec.step("kosmos_g_files", lambda: ensure_files(work, tiny, rec.say), need=0 if tiny else 60)
    if not kosmos:
        return
    if dynamic and not (rec.step("dynamic_vram_control", dynamic[0]) or {}).get("enabled"):
        return
    started = time.perf_counter()
    host = ComfyHost(find_comfyui(), os.path.join(work, "comfy_base"))
    if dynamic and not (rec.step("dynamic_vram_devices", dynamic[1]) or {}).get("enabled"):
        return
    import comfy.model_management as mm
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False  # the sampler's tqdm bars, 30 steps a run, would swamp the log
    memory = sys.modules.get("comfy.memory_management")  # ComfyUI 0.33's DynamicVRAM switch; absent in 0.3.75
    rec.put("comfyui", {"version": host.version, "root": host.root,
                        "boot_seconds": round(time.perf_counter() - started, 2),
                        "vram_state": getattr(mm.vram_state, "name", str(mm.vram_state)),
                        "dynamic_vram": bool(getattr(memory, "aimdo_enabled", False)),
                        "note": "in-process runner: main.py's allocator set-up does not run"
                                + ("" if dynamic else ", nor its DynamicVRAM (comfy-aimdo): "
                                                      "section comfy_dynamic turns that on")})
    rec.say(f"ComfyUI {host.version} booted in {time.perf_counter() - started:.1f} s")
    models = host.folder_paths.models_dir
    settings = {"device": device, "size": 64 if tiny else 512, "steps": 2 if tiny else 30, "runs": 1 if tiny else 5,
                "kosmos_file": _place(kosmos["paths"]["safetensors"], os.path.join(models, "kosmos_g"))}
    rec.put("settings", {k: v for k, v in settings.items() if k != "device"}
            | {"sampler": "euler normal, cfg 7.5, batch 1"})
    checkpoint = os.path.join(models, "checkpoints", SD15_FILE)
    os.makedirs(os.path.dirname(checkpoint), exist_ok=True)

    def write_sd15():
        from . import sd15

        began = time.perf_counter()
        if os.path.exists(checkpoint):  # written by the section before (comfy, then comfy_dynamic)
            return {"reused": checkpoint}
        if tiny:  # the tiny test model; the real layout is still checked, on meta tensors
            from ..comfy_host.tiny_models import write_tiny_sd15

            write_tiny_sd15(checkpoint)
            return {"tiny": True, "real_layout": sd15.layout(), "write_seconds": round(time.perf_counter() - began, 2)}
        figures = sd15.write(checkpoint)
        return {**figures, "bytes": os.path.getsize(checkpoint), "write_seconds": round(time.perf_counter() - began, 2)}

    if not rec.step("sd15", write_sd15, need=0 if tiny else 30):
        return
    families = {}
    for index, kind in enumerate(("clip_text", "kosmos_g")):
        timed = functools.partial(timed_family, host, kind, settings, 100 * (index + 1))
        families[kind] = rec.step(kind, timed, need=0 if tiny else 20)
        if families[kind]:
            rec.say(f"{kind}: median {families[kind]['median_seconds']:.3f} s over {settings['runs']} runs "
                    f"(first {families[kind]['first_run_seconds']:.2f} s)")
    if families["clip_text"] and families["kosmos_g"]:
        clip, kosmos_g = families["clip_text"]["median_seconds"], families["kosmos_g"]["median_seconds"]
        rec.put("overhead_percent", round(100 * (kosmos_g - clip) / clip, 2))
        rec.put("overhead_seconds", round(kosmos_g - clip, 4))
        try:
            rec.put("kosmos_g_dtype", str(host.node_output("ks").encoder.dtype))
        except Exception as exc:  # noqa: BLE001  (the node's output type is the nodes' business)
            rec.put("kosmos_g_dtype", f"unknown: {one_line(exc)}")
        rec.say(f"KosmosGEncode overhead: {rec.data['overhead_percent']:+.2f} %")
    caps = {}
    for index, (kind, cap) in enumerate(CAPS_GB):
        key = f"{kind}_{cap:.1f}GB"
        capped = functools.partial(capped_run, host, kind, cap, settings, 900 + index)
        caps[key] = rec.step(f"vram_cap_{key}", capped, need=0 if tiny else 15)
        if caps[key]:
            rec.say(f"VRAM cap {key}: {'ran' if caps[key]['success'] else 'FAILED: ' + str(caps[key]['error'])[:160]}")
