"""The main job: a workflow run headless from the command line."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def workflow(*args):
    return subprocess.run([sys.executable, "-m", "kosmosg_core", "workflow", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_without_weights_it_says_which_files_go_where(tmp_path):
    done = workflow("workflows/kosmos-g_controlnet-canny.json", "--base-dir", str(tmp_path))
    assert done.returncode == 2
    for expected in ("checkpoint_final.pt: put it in " + str(tmp_path / "models" / "kosmos_g"),
                     "v1-5-pruned-emaonly.safetensors: put it in " + str(tmp_path / "models" / "checkpoints"),
                     "control_v11p_sd15_canny.pth: put it in " + str(tmp_path / "models" / "controlnet"),
                     "dog.png: put your image in " + str(tmp_path / "input"), "--offline-smoke"):
        assert expected in done.stderr, done.stderr
    assert "image saved" not in done.stdout


def test_offline_smoke_run_writes_an_image(tmp_path):
    done = workflow("workflows/kosmos-g_multi-entity.json", "--offline-smoke", "--base-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OFFLINE SMOKE RUN" in done.stdout
    saved = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("image saved: ")]
    assert saved and all((tmp_path / "output") in __import__("pathlib").Path(p).parents for p in saved)
