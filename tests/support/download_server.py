"""A fake web on 127.0.0.1 for the download tests, reached through ``download --mirror``.

The downloader fetches ``https://HOST/PATH?QUERY`` as ``MIRROR/HOST/PATH?QUERY``, so this server
answers ``/HOST/PATH`` (the query is ignored). It speaks just the HTTP the real sources speak:
``Range`` requests (206 + ``Content-Range``, ``If-Range`` against the ETag, 416), Azure's
``Content-MD5``, and the Hugging Face hub (the tree API's JSON listing, and ``resolve`` URLs that
redirect LFS files to a CDN host with the sha256 in ``X-Linked-Etag``).

    from support.download_server import serve_models

    with serve_models() as web:        # every file of kosmos-g, gill and sd15, small ones
        subprocess.run([sys.executable, "-m", "kosmosg_core", "download", "gill",
                        "--dest", models_dir, "--mirror", web.url], cwd=REPO)
        web.models["gill"]             # {path under models/: the bytes that must land there}
        web.paths["gill/gill_opt/model_args.json"]  # the server path that sends those bytes
        web.log                        # every request: method, path, headers, status, body bytes
        web.cut[path] = 1000           # close the connection after 1000 body bytes
        web.corrupt(path)              # send other bytes, keep the real metadata
        web.hostile[path] = Hostile(...)  # lie, stall, drip, never end (see Hostile)

``FakeWeb`` on its own serves whatever ``add_file`` and ``add_hub_repo`` give it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from support import require_fixture

from kosmosg_core.download import MANIFEST, HubRepo

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".pt", ".tar")


@dataclass
class Logged:
    method: str
    path: str  # as requested, with the query
    headers: dict[str, str]  # names in lower case
    status: int = 0
    body_bytes: int = 0


@dataclass
class Served:
    body: bytes  # the real file: ETag, Content-MD5 and the hub listing describe these bytes
    md5: bool = False  # Azure style: Content-MD5 on full answers, x-ms-blob-content-md5 on ranges
    sent: bytes | None = None  # what actually goes out when corrupted

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.body).hexdigest() + '"'


ENDLESS_MAX = 256 << 20  # an "endless" body still ends here, so a broken client cannot loop the test forever
STALL_MAX_S = 60.0  # a stalled answer waits at most this long (or until the server shuts down)


@dataclass
class Hostile:
    """How a path misbehaves (every field optional; GET unless it says HEAD).

    ``head_headers``/``head_status``: what a HEAD answers instead (a lying HEAD). ``status``: GETs
    answer this status with ``body`` (or a short text). ``body``: sent instead of the file, under
    the file's own metadata unless ``headers`` overrides it; ``headers`` adds or replaces headers (a
    None value drops one, "Content-Length" included). ``no_length``: no Content-Length, the body
    ends when the connection closes. ``endless``: after the body, this pattern repeats until the
    client goes (at most ``ENDLESS_MAX`` bytes). ``stall_s``: read the request, then answer nothing
    for that long. ``drip``: (bytes, seconds) per piece. ``content_range``: the Content-Range of a
    206; ``always_206``: a 206 even to a request without Range."""

    head_headers: dict[str, str | None] | None = None
    head_status: int | None = None
    status: int | None = None
    body: bytes | None = None
    headers: dict[str, str | None] = field(default_factory=dict)
    no_length: bool = False
    endless: bytes | None = None
    stall_s: float = 0.0
    drip: tuple[int, float] | None = None
    content_range: str | None = None
    always_206: bool = False


@dataclass
class FakeWeb:
    files: dict[str, Served] = field(default_factory=dict)
    redirects: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)  # path -> (Location, headers)
    cut: dict[str, int] = field(default_factory=dict)
    hostile: dict[str, Hostile] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)
    models: dict[str, dict[str, bytes]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def add_file(self, url: str, body: bytes, md5: bool = False) -> str:
        """Serve ``body`` for ``url`` (an original https URL); returns the server path."""
        parts = urlsplit(url)
        path = f"/{parts.netloc}{parts.path}"
        self.files[path] = Served(body, md5)
        return path

    def add_hub_repo(self, repo: str, files: dict[str, bytes]) -> dict[str, str]:
        """Serve a Hugging Face repo: its tree listing and resolve URLs (LFS ones redirect to a CDN).
        Returns file name -> the server path that sends its bytes."""
        listing, served = [], {}
        for folder in sorted({name.rpartition("/")[0] for name in files} - {""}):
            listing.append({"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
        for name, body in sorted(files.items()):
            entry = {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
            resolve = f"https://huggingface.co/{repo}/resolve/main/{name}"
            if name.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(body).hexdigest()
                entry["lfs"] = {"oid": sha256, "size": len(body), "pointerSize": 134}
                cdn = f"https://cdn-lfs.hf.co/repos/{sha256}"
                self.redirects[self.add_file(resolve, b"")] = (cdn, {"X-Linked-Etag": f'"{sha256}"',
                                                                    "X-Linked-Size": str(len(body))})
                served[name] = self.add_file(cdn, body)
            else:
                served[name] = self.add_file(resolve, body)
            listing.append(entry)
        self.add_file(f"https://huggingface.co/api/models/{repo}/tree/main", json.dumps(listing).encode())
        return served

    def corrupt(self, path: str, size: int | None = None) -> None:
        """Send other bytes (``size`` of them, default the real size) under the real metadata."""
        served = self.files[path]
        flipped = bytes(b ^ 0x5A for b in served.body)
        size = len(served.body) if size is None else size
        served.sent = (flipped * (size // max(len(flipped), 1) + 1))[:size]

    def bytes_served(self, path: str) -> int:
        """Body bytes sent for ``path`` by GET answers so far."""
        return sum(e.body_bytes for e in self.log if e.method == "GET" and urlsplit(e.path).path == path)

    def requests(self, path: str, method: str = "GET") -> list[Logged]:
        return [e for e in self.log if e.method == method and urlsplit(e.path).path == path]

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeWeb:
        self.closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler(web: FakeWeb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the request log is web.log
            pass

        def do_HEAD(self) -> None:
            self.answer(head=True)

        def do_GET(self) -> None:
            self.answer(head=False)

        def answer(self, head: bool) -> None:
            logged = Logged(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            web.log.append(logged)
            path = urlsplit(self.path).path
            bad = web.hostile.get(path, Hostile())
            if bad.stall_s:
                web.closing.wait(min(bad.stall_s, STALL_MAX_S))
                self.close_connection = True
                return
            if path in web.redirects:
                location, headers = web.redirects[path]
                return self.reply(logged, 302, {"Location": location, **headers})
            served = web.files.get(path)
            if served is None:
                return self.reply(logged, 404, {}, b"Entry not found")
            if head and (bad.head_headers is not None or bad.head_status):
                return self.reply(logged, bad.head_status or 200, bad.head_headers or {}, b"", head=True)
            if bad.status and not head:
                return self.reply(logged, bad.status, bad.headers, b"Server error" if bad.body is None else bad.body)
            body = served.body if served.sent is None else served.sent
            body = body if bad.body is None else bad.body
            start = self.range_start(served.etag)
            if start is not None and start >= len(body):
                return self.reply(logged, 416, {"Content-Range": f"bytes */{len(body)}"})
            status = 200 if start is None and not bad.always_206 else 206
            headers = {"ETag": served.etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if status == 206:
                headers["Content-Range"] = bad.content_range or f"bytes {start or 0}-{len(body) - 1}/{len(body)}"
            if served.md5:
                name = "Content-MD5" if status == 200 else "x-ms-blob-content-md5"
                headers[name] = base64.b64encode(hashlib.md5(served.body).digest()).decode()
            if bad.no_length or bad.endless is not None:
                headers["Content-Length"] = None
            headers.update(bad.headers)
            self.reply(logged, status, headers, body[start or 0:], head, web.cut.get(path), bad)

        def range_start(self, etag: str) -> int | None:
            """N of ``Range: bytes=N-`` when it applies (no If-Range, or the same version)."""
            wanted = self.headers.get("Range", "")
            if not wanted.startswith("bytes=") or self.headers.get("If-Range", etag) != etag:
                return None
            return int(wanted[len("bytes="):].partition("-")[0])

        def reply(self, logged: Logged, status: int, headers: dict, body: bytes = b"", head: bool = False,
                  cut: int | None = None, bad: Hostile | None = None) -> None:
            bad = bad or Hostile()
            logged.status = status
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                if value is not None:
                    self.send_header(name, value)
            if "Content-Length" in headers and headers["Content-Length"] is None:
                self.close_connection = True  # the body ends when the connection does
            self.end_headers()
            if head:
                return
            sent = body if cut is None else body[:cut]
            try:
                if bad.drip:
                    size, pause = bad.drip
                    for at in range(0, len(sent), size):
                        if web.closing.wait(pause):
                            break
                        self.wfile.write(sent[at:at + size])
                        self.wfile.flush()
                        logged.body_bytes += len(sent[at:at + size])
                else:
                    self.wfile.write(sent)
                    self.wfile.flush()
                    logged.body_bytes = len(sent)
                if bad.endless:
                    while logged.body_bytes < ENDLESS_MAX and not web.closing.is_set():
                        self.wfile.write(bad.endless)
                        logged.body_bytes += len(bad.endless)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up: what a refusal looks like
                self.close_connection = True
                return
            if cut is not None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


def closed_port_url() -> str:
    """A URL nothing listens on: connections are refused, as when offline behind a firewall."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tiny_safetensors(size: int, seed: int = 15) -> bytes:
    """A valid safetensors file of exactly ``size`` bytes: one float32 tensor of random bits."""
    header_room = 120
    count = (size - 8 - header_room) // 4
    header = json.dumps({"weight": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}).encode()
    header = header.ljust(size - 8 - count * 4)
    return struct.pack("<Q", len(header)) + header + random.Random(seed).randbytes(count * 4)


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def serve_models() -> FakeWeb:
    """A FakeWeb holding every MANIFEST source, made of the small official-format fixtures in
    tests/data/fixtures. The hub repos also hold files the downloader must skip (other weight formats,
    subfolders, other checkpoints); ``web.models`` lists only what must be downloaded."""
    kosmos = require_fixture("kosmosg-official-tiny")
    gill = require_fixture("gill-official-tiny")
    # The tiny checkpoint's own tokenizer (307 entries): the real 64,007-entry one in
    # ../shared/reference does not fit the tiny checkpoint, and the download must load.
    plain = {
        "kosmos_g/checkpoint_final.pt": (kosmos / "checkpoint.pt").read_bytes(),
        "kosmos_g/sentencepiece.bpe.model": (kosmos / "sentencepiece.bpe.model").read_bytes(),
        "kosmos_g/dict.txt": (kosmos / "dict.txt").read_bytes(),
        **{f"gill/gill_opt/{name}": (gill / name).read_bytes()
           for name in ("model_args.json", "pretrained_ckpt.pth.tar", "decision_model.pth.tar")},
    }
    decoys = {"tf_model.h5": b"tf", "flax_model.msgpack": b"flax", "pytorch_model.bin": b"pt",
              "README.md": b"# card", "onnx/model.onnx": b"onnx"}
    hub = {
        "facebook/opt-6.7b": (_folder(gill / "llm"), {**decoys, "pytorch_model.bin.index.json": b"{}"}),
        "openai/clip-vit-large-patch14": (_folder(gill / "vision"), decoys),
        "stable-diffusion-v1-5/stable-diffusion-v1-5": (
            {"v1-5-pruned-emaonly.safetensors": tiny_safetensors(300_000)},
            {"v1-5-pruned.safetensors": b"full", "model_index.json": b"{}", "unet/config.json": b"{}"},
        ),
    }
    web = FakeWeb()
    for model, entries in MANIFEST.items():
        web.models[model] = {}
        for entry in entries:
            if isinstance(entry, HubRepo):
                wanted, others = hub[entry.repo]
                paths = web.add_hub_repo(entry.repo, {**wanted, **others})
                for name, body in wanted.items():
                    web.models[model][f"{entry.dest}/{name}"] = body
                    web.paths[f"{entry.dest}/{name}"] = paths[name]
            else:
                body = plain[entry.dest]
                web.models[model][entry.dest] = body
                web.paths[entry.dest] = web.add_file(entry.url, body, md5=".blob.core.windows.net" in entry.url)
    return web
