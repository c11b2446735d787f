"""ComfyUI's own HTTP server in a subprocess on 127.0.0.1, with this pack, tiny models and images.

The pack is linked into ``<base>/custom_nodes/kosmos-g`` and found by ComfyUI's normal scan, as in
a user's install. The official frontend (``comfyui-frontend-package``) is served when installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psutil

from support import REPO
from support.comfy_graphs import write_input_images

SERVE = Path(__file__).with_name("serve_comfy.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """A running ``main.py``; ``queue``/``wait``/``image`` are thin wrappers over its HTTP API."""

    def __init__(self, base: Path, models_dir: str):
        """``models_dir``: a ComfyUI models folder (the in-process host's, so both use the same files)."""
        from kosmosg_core.comfy_host.host import find_comfyui

        self.base, self.port = base, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for name in ("input", "output", "custom_nodes"):
            (base / name).mkdir(parents=True, exist_ok=True)
        (base / "custom_nodes" / "kosmos-g").symlink_to(REPO, target_is_directory=True)
        (base / "models").symlink_to(models_dir, target_is_directory=True)
        write_input_images(str(base / "input"))
        self.log = open(base / "server.log", "w")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.process = subprocess.Popen(
            [sys.executable, str(SERVE), find_comfyui(), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes",
             "--database-url", "sqlite:///:memory:"],
            cwd=base, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        return (self.base / "server.log").read_text(errors="replace")[-chars:]

    def _wait_until_up(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI server did not answer in {timeout} s:\n{self.log_tail()}")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def queue(self, prompt: dict) -> tuple[int, dict]:
        return self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry once the prompt has finished (successfully or not)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"server died:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def images(self, entry: dict) -> list[bytes]:
        found = []
        for output in entry["outputs"].values():
            for image in output.get("images", []):
                query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
                with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=30) as response:
                    found.append(response.read())
        return found

    def rss_bytes(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
