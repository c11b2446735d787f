"""Runs the sections in order, each in its own process group under a wall-time budget, and rewrites
the JSON after every section (temp then rename). A section that raises leaves its error line and
the next section runs; one that outlives its budget is killed and leaves what it had written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from . import report
from .common import write_json_atomic
from .worker import SECTIONS

# seconds: (budget, the least worth starting with). The real budgets sum past the total on purpose:
# a section rarely needs its whole budget, and each is cut so the sections after it keep their least.
BUDGETS = {
    "real": {"env": (40, 20), "kosmosg": (150, 60), "comfy": (150, 60), "gill": (170, 60), "comfy_dynamic": (100, 40),
             "cuda_tests": (100, 60)},
    "tiny": {"env": (60, 10), "kosmosg": (90, 10), "comfy": (120, 10), "gill": (90, 10), "comfy_dynamic": (60, 10),
             "cuda_tests": (90, 10)},
}
TOTAL = {"real": 460, "tiny": 300}  # the real run must end inside 8 minutes with the install (~20 s)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Run:
    def __init__(self, out: str, mode: str, sections: list[str], work: str, total: float, budgets: dict):
        self.out, self.mode, self.sections, self.work = out, mode, sections, work
        self.json_path = os.path.join(out, "device_check.json")
        self.started = time.time()
        self.deadline = self.started + total
        self.budgets = budgets
        self.doc = {
            "schema": 1, "mode": mode, "started_unix": round(self.started), "finished": False, "wall_seconds": 0,
            "total_budget_seconds": total, "sections_planned": sections,
            "targets": {"encode_2_images_bf16_ms": report.ENCODE_TARGET_MS,
                        "comfy_overhead_percent": report.OVERHEAD_TARGET_PERCENT,
                        "vram_tolerance": report.VRAM_TOLERANCE},
            "readme_estimates_gb": report.ESTIMATES_GB,
            "sections": {}, "measured": {}, "verdicts": [],
        }

    def save(self) -> None:
        self.doc["wall_seconds"] = round(time.time() - self.started, 1)
        self.doc["measured"] = report.measurements(self.doc["sections"])
        self.doc["verdicts"] = report.verdicts(self.doc["sections"], self.mode == "tiny")
        write_json_atomic(self.json_path, self.doc)

    def budget_for(self, index: int) -> tuple[float, float]:
        budget, least = self.budgets[self.sections[index]]
        reserved = sum(self.budgets[name][1] for name in self.sections[index + 1:])
        return min(budget, self.deadline - time.time() - reserved), least

    def run_section(self, index: int, settings: dict) -> None:
        name = self.sections[index]
        budget, least = self.budget_for(index)
        if budget < least:
            self.doc["sections"][name] = {"status": "skipped",
                                          "reason": f"{budget:.0f} s of the total budget left for it, "
                                                    f"under the {least} s it needs at least"}
            print(f"== {name}: skipped (total budget)", flush=True)
            return
        result_path = os.path.join(self.work, f"{name}.result.json")
        settings_path = os.path.join(self.work, f"{name}.settings.json")
        write_json_atomic(settings_path, {**settings, "deadline": time.time() + budget - 3})
        print(f"== {name}: starting (budget {budget:.0f} s)", flush=True)
        started = time.time()
        process = subprocess.Popen([sys.executable, "-m", "kosmosg_core.device_check.worker", name, settings_path,
                                    result_path],
                                   cwd=settings["repo"], start_new_session=True,
                                   env={**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
        timed_out = False
        try:
            process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)  # the section's own process group (pytest etc. with it)
            process.wait()
        result = {}
        if os.path.isfile(result_path):
            with open(result_path, encoding="utf-8") as handle:
                result = json.load(handle)
        if timed_out:
            result.update(status="timeout",
                          error=f"killed after its budget of {budget:.0f} s; figures above are partial")
        elif process.returncode and result.get("status") != "error":
            result.update(status="error", error=f"the section's process ended with exit code {process.returncode}")
        result["seconds"] = round(time.time() - started, 1)
        result["budget_seconds"] = round(budget)
        self.doc["sections"][name] = result
        print(f"== {name}: {result.get('status')} in {result['seconds']} s"
              + (f" -- {result['error']}" if result.get("error") else ""), flush=True)

    def run(self) -> dict:
        settings = {"mode": self.mode, "work": self.work, "device": _device(),
                    "repo": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
        self.doc["device"] = settings["device"]
        self.save()
        for index in range(len(self.sections)):
            self.run_section(index, settings)
            self.save()
        self.doc["finished"] = True
        self.save()
        return self.doc


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kosmosg_core.device_check", description=__doc__)
    parser.add_argument("--out", required=True, help="folder for device_check.json")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test of this script)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, in order; default {','.join(SECTIONS)}")
    parser.add_argument("--work", help="scratch folder (default: a fresh one under the system temp folder, "
                                       "removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--total", type=float, help="total wall-time budget in seconds")
    parser.add_argument("--budget", action="append", default=[], metavar="SECTION=SECONDS",
                        help="override one section's budget (and its least)")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "real"
    sections = [s for s in args.sections.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(SECTIONS)}")
    budgets = dict(BUDGETS[mode])
    for item in args.budget:
        name, _, seconds = item.partition("=")
        budgets[name] = (float(seconds), min(float(seconds), budgets.get(name, (0, 0))[1]))
    os.makedirs(args.out, exist_ok=True)
    if args.work:
        os.makedirs(args.work, exist_ok=True)
    work = tempfile.mkdtemp(prefix="kosmosg-device-check-", dir=args.work)
    try:
        doc = Run(args.out, mode, sections, work, args.total or TOTAL[mode], budgets).run()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    bad = {name: s.get("status") for name, s in doc["sections"].items() if s.get("status") != "ok"}
    print(f"device check done in {doc['wall_seconds']} s; JSON: {os.path.join(args.out, 'device_check.json')}"
          + (f"; not ok: {bad}" if bad else "; every section ok"), flush=True)
    return 1 if any(status in ("error", "timeout") for status in bad.values()) else 0
