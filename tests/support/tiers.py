"""The tiers: every test has at least one (a marker registered in pytest.ini), assigned here.

A test gets the tiers of its file (FILE_TIERS; a "file::test" entry replaces them for that test), those of
the fixtures it uses (FIXTURE_TIERS, e.g. anything on a real ComfyUI is `comfy`) and tier markers
written in the file (test_cuda.py's `cuda`); `unit` only stays on tests with no other tier. conftest.py
applies them at collection and fails the run when a test has none. `-m "unit or parity"` is the quick tier
(README, Quick start).
"""

from __future__ import annotations

from pathlib import Path

FILE_TIERS = {
    # in-process, tiny generated models or the small fixtures: seconds
    **dict.fromkeys(["test_bad_inputs.py", "test_batching.py", "test_cli.py", "test_convert.py",
                     "test_converted_cache.py", "test_download.py", "test_images.py", "test_loading.py",
                     "test_safe_pickle.py"], {"unit"}),
    # the official-code fixtures (tests/data/fixtures, and ../shared's when present), the real tokenizer
    **dict.fromkeys(["test_parity.py", "test_gill.py", "test_tokenizer.py"], {"parity"}),
    # a real ComfyUI: booted in-process, its HTTP server, the second host (0.33.0) in its own venv
    **dict.fromkeys(["test_comfy_gill.py", "test_comfy_interface.py", "test_comfy_nodes.py",
                     "test_comfy_workflows.py", "test_runner.py", "test_server_load.py", "test_hosts.py"], {"comfy"}),
    "test_eval.py": {"eval"},  # the papers' evaluation protocols end to end on tiny stand-in models
    "test_browser.py": {"browser"},  # headless Chromium on ComfyUI's own frontend
    # other processes: torchrun / accelerate launches, the device check, the CLI's bench, a second venv
    **dict.fromkeys(["test_training.py", "test_device_check.py"], {"multiprocess"}),
    # pip / build / the Comfy Registry archive, and the README's commands run in a sandbox
    **dict.fromkeys(["test_packaging.py", "test_readme.py"], {"packaging"}),
    # the hostile-input suites: hundreds of capped subprocess cases beside canaries
    **dict.fromkeys(["test_hostile_checkpoints.py", "test_hostile_cli.py", "test_hostile_download.py",
                     "test_hostile_eval.py", "test_hostile_gill_folders.py", "test_hostile_inputs.py",
                     "test_hostile_training.py", "test_hostile_workflows.py"], {"hostile"}),
    "test_cuda.py": {"cuda"},  # skips without a CUDA GPU (scripts/device_check.sh runs it)
    **dict.fromkeys(["test_tiers.py", "test_architecture.py"], {"unit"}),
    # single tests that belong to another tier than their file's
    "test_cli.py::test_bench_tiny_reports_every_figure": {"multiprocess"},  # ~80 s of benchmark processes
    "test_eval.py::test_accelerate_launch_splits_items_and_gives_the_single_process_images": {"multiprocess"},
    "test_gill.py::test_kv_cache_tests_pass_under_the_lowest_declared_transformers": {"multiprocess"},
    "test_parity.py::test_cli_runs_as_module": {"multiprocess"},
    "test_hostile_training.py::test_two_processes_each_print_one_line": {"hostile", "multiprocess"},
}
FIXTURE_TIERS = {"comfy": "comfy", "comfy_server": "comfy"}
TIERS = ("unit", "parity", "eval", "comfy", "browser", "multiprocess", "packaging", "hostile", "cuda")


def tiers_of(item) -> set[str]:
    """The tiers a collected test gets from FILE_TIERS / FIXTURE_TIERS (markers written in the file add to them)."""
    path = Path(str(item.fspath))
    key = path.name if path.parent.name == "tests" else None
    tiers = set(FILE_TIERS.get(f"{key}::{getattr(item, 'originalname', item.name)}", FILE_TIERS.get(key, ())))
    tiers.update(FIXTURE_TIERS[name] for name in getattr(item, "fixturenames", ()) if name in FIXTURE_TIERS)
    tiers.update(mark.name for mark in item.iter_markers() if mark.name in TIERS)
    if len(tiers) > 1:
        tiers.discard("unit")
    return tiers
