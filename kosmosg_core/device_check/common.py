"""What every section's process uses: progress lines, the partial-result file, latency and VRAM."""

from __future__ import annotations

import json
import statistics
import time
import traceback

from ..safe_files import atomic_write_text


def write_json_atomic(path: str, data) -> None:
    """Temp file, then rename: a reader (or a killed run) sees the old file or the new one, never half."""
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def one_line(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:limit]


def gb(nbytes: float | None) -> float | None:
    return None if nbytes is None else round(nbytes / 1e9, 3)


class Recorder:
    """One section's results, rewritten after every step, so a section killed at its budget still
    leaves what it measured. ``step`` guards a sub-measurement: an exception becomes one line in the
    results (the traceback goes to the log) and the section goes on with its next step."""

    def __init__(self, section: str, path: str, deadline: float, settings: dict):
        self.section, self.path, self.deadline, self.settings = section, path, deadline, settings
        self.tiny = settings["mode"] == "tiny"
        self.data: dict = {}
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{self.section} +{time.monotonic() - self.started:.1f}s] {message}", flush=True)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        write_json_atomic(self.path, self.data)

    def time_left(self) -> float:
        return self.deadline - time.time()

    def step(self, key: str, function, need: float = 0.0):
        """``function()``'s dict under ``key`` (status ok), or a skip when less than ``need`` seconds of
        the section's budget are left, or the error line; returns the dict or None."""
        left = self.time_left()
        if left < need:
            self.put(key, {"status": "skipped",
                           "reason": f"needs about {need:.0f} s; {left:.0f} s of the section's budget left"})
            self.say(f"{key}: skipped (budget)")
            return None
        started = time.monotonic()
        try:
            value = function()
        except Exception as exc:  # noqa: BLE001  (each step is guarded; the next one runs)
            traceback.print_exc()
            self.put(key, {"status": "error", "error": one_line(exc), "seconds": round(time.monotonic() - started, 2)})
            self.say(f"{key}: ERROR {one_line(exc)}")
            return None
        value = {"status": "ok", **(value or {})}
        self.put(key, value)
        return value


def synchronize(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def latency(function, repeats: int, warmup: int, device) -> dict:
    """Median (and p90, min) of ``repeats`` calls after ``warmup``: CUDA events on a GPU (start recorded
    before the call's CPU work, end after its last kernel), else the wall clock."""
    import torch

    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        function()
    synchronize(device)
    clock, wall = [], []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        began = time.perf_counter()
        function()
        if cuda:
            end.record()
            end.synchronize()
            clock.append(start.elapsed_time(end))
        wall.append((time.perf_counter() - began) * 1000)
    main = clock or wall
    ordered = sorted(main)
    return {
        "median_ms": round(statistics.median(main), 3),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "min_ms": round(ordered[0], 3),
        "wall_median_ms": round(statistics.median(wall), 3),
        "repeats": repeats,
        "warmup": warmup,
        "clock": "CUDA events" if cuda else "wall clock",
    }


def reset_peak(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def vram(device) -> dict:
    """Allocated and reserved bytes now and at their peak since :func:`reset_peak` (None on the CPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return {"allocated_bytes": None, "peak_allocated_bytes": None, "peak_reserved_bytes": None}
    torch.cuda.synchronize()
    return {
        "allocated_bytes": torch.cuda.memory_allocated(),
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
    }


def free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
