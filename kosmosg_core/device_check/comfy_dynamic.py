"""Section ``comfy_dynamic``: section ``comfy`` again with ComfyUI 0.33's DynamicVRAM on, as its main.py
turns it on for NVIDIA GPUs (comfy-aimdo's control library before ComfyUI's modules load, its devices
and ``ModelPatcherDynamic`` for core models after). The runner does not do this (it never runs
main.py), but users of ComfyUI 0.33 on NVIDIA get it by default: the pack's encoders, plain
ModelPatchers loaded with ``force_full_load``, share the GPU with dynamic core models there.
"""

from __future__ import annotations

from . import comfy
from .common import Recorder


def control_init(device: str) -> dict:
    if device != "cuda":
        return {"enabled": False, "reason": "DynamicVRAM needs a CUDA GPU (ComfyUI turns it on for NVIDIA only)"}
    import comfy_aimdo.control as control

    try:
        done = control.init(simple_vram_headroom=None, nvml_pressure=True)
    except TypeError:  # comfy-aimdo before 0.4.11
        done = control.init()
    return {"enabled": bool(done), "control_init": done}


def devices_init() -> dict:
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control as control
    from comfy.cli_args import args

    if mm.torch_version_numeric < (2, 8):
        return {"enabled": False, "reason": f"torch {mm.torch_version_numeric}: DynamicVRAM needs 2.8 or later"}
    devices = mm.get_all_torch_devices()
    try:
        ready = control.init_devices((d.index, int(args.vram_headroom * 1024**3)) for d in devices)
    except TypeError:  # comfy-aimdo 0.4.9
        ready = control.init_devices(d.index for d in devices)
    if not ready:
        return {"enabled": False, "reason": "comfy_aimdo.control.init_devices returned False"}
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return {"enabled": True}


def run(rec: Recorder) -> None:
    comfy.run(rec, dynamic=(lambda: control_init(rec.settings["device"]), devices_init))
