"""One section in its own process: ``python -m kosmosg_core.device_check.worker SECTION SETTINGS RESULT``.

The section writes its results into RESULT as it goes; this wrapper adds the final status, or the
error in one line (the traceback goes to the log). ``KOSMOSG_DEVICE_CHECK_FAULT`` (``section:raise``
or ``section:hang``, comma-separated) injects a failure, for the tests of the guards.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

from .common import Recorder, one_line

SECTIONS = ("env", "kosmosg", "comfy", "gill", "comfy_dynamic", "cuda_tests")


def _fault(rec: Recorder) -> None:
    faults = dict(item.split(":", 1) for item in os.environ.get("KOSMOSG_DEVICE_CHECK_FAULT", "").split(",")
                  if ":" in item)
    kind = faults.get(rec.section)
    if kind == "raise":
        raise RuntimeError(f"injected fault in section {rec.section} (KOSMOSG_DEVICE_CHECK_FAULT)")
    if kind == "hang":
        rec.put("before_hang", True)
        time.sleep(3600)


def main(section: str, settings_path: str, result_path: str) -> int:
    with open(settings_path, encoding="utf-8") as handle:
        settings = json.load(handle)
    rec = Recorder(section, result_path, settings["deadline"], settings)
    rec.put("status", "running")
    try:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        _fault(rec)
        importlib.import_module(f"kosmosg_core.device_check.{section}").run(rec)
    except BaseException as exc:  # noqa: BLE001  (the section's one-line error is the result)
        traceback.print_exc()
        rec.put("error", one_line(exc))
        rec.put("status", "error")
        return 1
    rec.put("status", "ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
