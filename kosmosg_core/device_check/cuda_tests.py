"""Section ``cuda_tests``: the test suite's CUDA branches (``pytest -m cuda``, tests/test_cuda.py).

Without a GPU every one of them must skip (none may pass without running); the counts say which.
The fixtures are the committed ones in tests/data/fixtures (they travel with the working tree);
``$KOSMOSG_SHARED/fixtures`` (default ../shared/fixtures) adds other sizes where it is present.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

from .common import Recorder

TEST_FILE = os.path.join("tests", "test_cuda.py")


def summarize(junit_xml: str) -> dict:
    """Counts, failures (test and first message line) and skip reasons from pytest's JUnit XML."""
    root = ElementTree.parse(junit_xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = suite.findall("testcase")
    summary = {"collected": len(cases), "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [],
               "skip_reasons": {}}
    for case in cases:
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            summary["passed"] += 1
        elif outcome.tag == "skipped":
            summary["skipped"] += 1
            reason = (outcome.get("message") or "").strip()[:200]
            summary["skip_reasons"][reason] = summary["skip_reasons"].get(reason, 0) + 1
        else:
            summary["failed" if outcome.tag == "failure" else "errors"] += 1
            message = (outcome.get("message") or outcome.text or "").strip().splitlines()
            summary["failures"].append({"test": name, "message": (message[0] if message else "")[:300]})
    return summary


def run(rec: Recorder) -> None:
    repo, work = rec.settings["repo"], rec.settings["work"]
    junit = os.path.join(work, "cuda_tests.xml")
    command = [sys.executable, "-m", "pytest", TEST_FILE, "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
    rec.put("command", " ".join(command[1:]))
    rec.say("running " + " ".join(command[2:]))
    timeout = max(5.0, rec.time_left() - 5)
    try:
        done = subprocess.run(command, cwd=repo, timeout=timeout)
        rec.put("pytest_exit_code", done.returncode)
    except subprocess.TimeoutExpired:
        rec.put("pytest_exit_code", None)
        rec.put("timed_out_after_seconds", round(timeout))
    if os.path.isfile(junit):
        summary = summarize(junit)
        rec.data.update(summary)
        rec.put("skip_reasons", summary["skip_reasons"])
        rec.say(f"{summary['passed']} passed, {summary['failed']} failed, {summary['errors']} errors, "
                f"{summary['skipped']} skipped of {summary['collected']}")
