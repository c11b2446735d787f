"""``python -m kosmosg_core download kosmos-g|gill|sd15``: fetch the released weights, resumably.

Each file is written to ``<name>.partial``, checked against what its source states (the size,
and a sha256 or MD5 where the source gives one; no checksum is invented here) and only then
renamed into place, so a file under its final name is always complete. A rerun resumes an
interrupted file with an HTTP ``Range`` request. ``--mirror URL`` (or ``KOSMOSG_DOWNLOAD_MIRROR``)
fetches ``https://HOST/PATH?QUERY`` as ``URL/HOST/PATH?QUERY``.

Nothing is downloaded at import time, and downloaded files are only written and hashed here,
never imported or unpickled.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Iterator
from urllib.parse import urlsplit

from .errors import DownloadError

MIRROR_ENV = "KOSMOSG_DOWNLOAD_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "ComfyUI-KosmosG-download"
HUB = "https://huggingface.co"

KOSMOSG_CHECKPOINT = (
    "https://conversationhub.blob.core.windows.net/beit-share-public/kosmosg/checkpoint_final.pt"
    "?sv=2023-01-03&st=2024-04-10T13%3A11%3A44Z&se=2050-04-11T13%3A11%3A00Z&sr=c&sp=r"
    "&sig=4cXJIjVRZHIBWqHjPgDn%2F01oczpDWXipmPCUk3Z8vbQ%3D"
)
KOSMOSG_DATA = "https://raw.githubusercontent.com/xichenpan/Kosmos-G/f5c0489320bb885f0454d69fa06e0b37aa88db88/data/"
# GitHub, not the Hugging Face copy (jykoh/gill): its decision_model.pth.tar is the old
# Linear(4097, 2) classifier, which the current GILL code cannot load.
GILL_RELEASE = "https://raw.githubusercontent.com/kohjingyu/gill/4600b71a3193267c14aac8b600d958611c4c20be/checkpoints/gill_opt/"
GILL_LICENCE = "see kohjingyu/gill"


@dataclass(frozen=True)
class UrlFile:
    """A file at a fixed URL; only the server's own response headers can verify it."""

    url: str
    dest: str  # relative to ComfyUI's models/
    licence: str
    what: str


@dataclass(frozen=True)
class HubRepo:
    """Files of a Hugging Face model repo; the hub's tree API lists their sizes and LFS sha256."""

    repo: str
    dest: str  # folder relative to ComfyUI's models/
    licence: str
    what: str
    only: tuple[str, ...] = ()  # just these files; default: see wanted_files()


MANIFEST: dict[str, tuple[UrlFile | HubRepo, ...]] = {
    "kosmos-g": (
        UrlFile(KOSMOSG_CHECKPOINT, "kosmos_g/checkpoint_final.pt", "MIT",
                "Kosmos-G final checkpoint (Azure blob, about 3.8-5.7 GB)"),
        UrlFile(KOSMOSG_DATA + "sentencepiece.bpe.model", "kosmos_g/sentencepiece.bpe.model", "MIT",
                "Kosmos-G tokenizer (SentencePiece model)"),
        UrlFile(KOSMOSG_DATA + "dict.txt", "kosmos_g/dict.txt", "MIT", "Kosmos-G tokenizer (fairseq dictionary)"),
    ),
    "gill": (
        UrlFile(GILL_RELEASE + "model_args.json", "gill/gill_opt/model_args.json", GILL_LICENCE, "GILL model arguments"),
        UrlFile(GILL_RELEASE + "pretrained_ckpt.pth.tar", "gill/gill_opt/pretrained_ckpt.pth.tar", GILL_LICENCE,
                "GILL trained layers (about 100 MB)"),
        UrlFile(GILL_RELEASE + "decision_model.pth.tar", "gill/gill_opt/decision_model.pth.tar", GILL_LICENCE,
                "GILL retrieve-or-generate classifier, Linear(4096, 2)"),
        HubRepo("facebook/opt-6.7b", "gill/opt-6.7b", "OPT-175B licence agreement (non-commercial research only)",
                "the frozen OPT-6.7B language model (about 13 GB)"),
        HubRepo("openai/clip-vit-large-patch14", "gill/clip-vit-large-patch14", "MIT", "CLIP ViT-L/14 (the vision tower)"),
    ),
    "sd15": (
        HubRepo("stable-diffusion-v1-5/stable-diffusion-v1-5", "checkpoints", "CreativeML OpenRAIL-M",
                "Stable Diffusion 1.5 (re-upload of the deleted runwayml repo, about 4 GB)",
                only=("v1-5-pruned-emaonly.safetensors",)),
    ),
}


@dataclass
class Expected:
    """What the sources state about a file (None: nothing), and who stated it, for the messages."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    said_by: dict[str, str] = field(default_factory=dict)

    def learn(self, kind: str, value: int | str | None, source: str) -> None:
        """Keep the first claim of each kind, so the hub listing outranks response headers."""
        if value is not None and getattr(self, kind) is None:
            setattr(self, kind, value)
            self.said_by[kind] = source

    def kinds(self) -> list[str]:
        return [kind for kind in ("size", "sha256", "md5") if getattr(self, kind) is not None]

    def describe(self) -> str:
        if not self.kinds():
            return "not verified: the server stated no size or checksum"
        return "verified: " + ", ".join(f"{kind} ({self.said_by[kind]})" for kind in self.kinds())


@dataclass(frozen=True)
class Planned:
    """One file to fetch: where from, where to, what to check, and how to get it by hand."""

    url: str
    path: str
    label: str  # path relative to models/, for the messages
    expected: Expected

    def by_hand(self) -> str:
        return f"To get it by hand, download {self.url} and save it as {self.path}"


class _RangeRefused(Exception):
    """HTTP 416: the partial file is not a prefix the server can continue."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Send redirects through the mirror too, and keep each hop's headers: Hugging Face states
    an LFS file's sha256 (``X-Linked-Etag``) on the redirect, not on the CDN's final answer."""

    def __init__(self, mirror: str | None):
        self.mirror = mirror
        self.hops: list[http.client.HTTPMessage] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        if self.mirror and not newurl.startswith(self.mirror.rstrip("/") + "/"):
            newurl = mirrored(newurl, self.mirror)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def mirrored(url: str, mirror: str | None) -> str:
    """``https://HOST/PATH?QUERY`` -> ``MIRROR/HOST/PATH?QUERY`` (unchanged without a mirror)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def default_models_dir() -> str:
    """The models/ of the ComfyUI this pack sits in, else the test host's comfy_home/models,
    which is where ``python -m kosmosg_core workflow`` looks on the built-in host."""
    from .runner.host import PACK_DIR

    parent = os.path.dirname(PACK_DIR)
    if os.path.basename(parent) == "custom_nodes":
        return os.path.join(os.path.dirname(parent), "models")
    return os.path.join(PACK_DIR, "comfy_home", "models")


def wanted_files(paths: list[str]) -> list[str]:
    """Config, tokenizer and preprocessor files plus one weight format: ``*.safetensors`` when the
    repo has any, else ``pytorch_model*.bin``; never TF, Flax or ONNX files, nor subfolders."""
    top = [path for path in paths if "/" not in path]
    safetensors = [path for path in top if path.endswith(".safetensors")]
    weights = safetensors or [path for path in top if fnmatch(path, "pytorch_model*.bin")]
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    small = [path for path in top if path.endswith((".json", ".txt")) and not path.endswith(".index.json")]
    return sorted(small + weights + [index] * (index in top))


def _open(url: str, mirror: str | None, hint: str, method: str = "GET", headers: dict | None = None):
    """Open ``url`` (through the mirror); network and HTTP failures become one-line DownloadErrors."""
    redirects = _Redirects(mirror)
    target = mirrored(url, mirror)
    request = urllib.request.Request(target, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.build_opener(redirects).open(request, timeout=TIMEOUT_S), redirects.hops
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and headers and "Range" in headers:
            raise _RangeRefused from None
        exc.close()
        raise DownloadError(f"{exc.url or target} answered HTTP {exc.code} {exc.reason}. {hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {urlsplit(target).netloc} ({reason}): you seem to be offline or behind a proxy "
            f"(set HTTPS_PROXY, or pass --mirror URL / {MIRROR_ENV}). {hint}"
        ) from None


def _header(response, hops: list, name: str) -> str | None:
    """A header of the final response, else of the latest redirect hop that sent it."""
    for headers in [response.headers, *reversed(hops)]:
        if headers.get(name):
            return headers.get(name)
    return None


def _learn_from_headers(expected: Expected, response, hops: list) -> None:
    """Size from Content-Length (Content-Range on a 206), sha256 from Hugging Face's X-Linked-Etag,
    MD5 from Azure's Content-MD5 (x-ms-blob-content-md5 on a range, where Content-MD5 is the range's)."""
    partial = response.status == 206
    if partial:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        expected.learn("size", int(total) if total.isdigit() else None, "Content-Range")
    elif response.headers.get("Content-Length", "").isdigit():
        expected.learn("size", int(response.headers["Content-Length"]), "Content-Length")
    linked = (_header(response, hops, "X-Linked-Etag") or "").removeprefix("W/").strip('"').lower()
    expected.learn("sha256", linked if re.fullmatch(r"[0-9a-f]{64}", linked) else None, "X-Linked-Etag")
    md5_header = "x-ms-blob-content-md5" if partial else "Content-MD5"
    try:
        md5 = base64.b64decode(response.headers.get(md5_header, ""), validate=True)
    except binascii.Error:
        md5 = b""
    expected.learn("md5", md5.hex() if len(md5) == 16 else None, md5_header)


def _hashers(expected: Expected) -> dict:
    """Only the digests some source can be checked against: hashing 5 GB twice is not free."""
    return {kind: hashlib.new(kind) for kind in ("sha256", "md5") if getattr(expected, kind)}


def _mismatch(label: str, expected: Expected, size: int, digests: dict[str, str]) -> str | None:
    """What differs between the file and its sources, or None when everything stated matches."""
    if expected.size is not None and size != expected.size:
        return f"{label}: expected {expected.size} bytes ({expected.said_by['size']}), got {size}"
    for kind, got in digests.items():
        if got != getattr(expected, kind):
            return f"{label}: expected {kind} {getattr(expected, kind)} ({expected.said_by[kind]}), got {got}"
    return None


def _hash_file(path: str, hashers: dict, desc: str) -> None:
    """Feed a file already on disk to the hashers, with a progress bar (gigabytes take a while)."""
    from tqdm import tqdm

    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=desc, file=sys.stderr, leave=False) as bar:
        while chunk := f.read(CHUNK):
            for hasher in hashers.values():
                hasher.update(chunk)
            bar.update(len(chunk))


def _check_existing(item: Planned, mirror: str | None) -> tuple[str | None, Expected]:
    """(None, what was checked) when the final file matches its sources, else (why not, ...).
    A HEAD request supplies the size and checksums when the manifest alone cannot (plain URLs)."""
    expected = copy.deepcopy(item.expected)
    if expected.size is None:
        response, hops = _open(item.url, mirror, item.by_hand(), method="HEAD")
        with response:
            _learn_from_headers(expected, response, hops)
    size = os.path.getsize(item.path)
    problem = _mismatch(item.label, expected, size, {})
    hashers = _hashers(expected)
    if problem or not hashers:
        return problem, expected
    _hash_file(item.path, hashers, f"checking {os.path.basename(item.path)}")
    return _mismatch(item.label, expected, size, {kind: h.hexdigest() for kind, h in hashers.items()}), expected


def _request(item: Planned, partial: str, mirror: str | None, hint: str):
    """GET the file, asking for the rest only when a partial file exists (``If-Range``: the rest of
    the same version, else the whole file). Returns (response, hops, offset to write at)."""
    offset = os.path.getsize(partial) if os.path.exists(partial) else 0
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        etag = _read_text(partial + ".etag")
        if etag and not etag.startswith("W/"):
            headers["If-Range"] = etag
    try:
        response, hops = _open(item.url, mirror, hint, headers=headers)
    except _RangeRefused:
        _discard(partial)
        return _request(item, partial, mirror, hint)
    if response.status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        response.close()
        _discard(partial)
        return _request(item, partial, mirror, hint)
    return response, hops, offset if response.status == 206 else 0


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _discard(partial: str) -> None:
    for path in (partial, partial + ".etag"):
        if os.path.exists(path):
            os.remove(path)


def _copy(response, out, hashers: dict, bar) -> tuple[int, str]:
    """Stream the body to ``out`` and the hashers; returns (bytes, why it stopped early or "")."""
    received = 0
    try:
        while chunk := response.read(CHUNK):
            out.write(chunk)
            for hasher in hashers.values():
                hasher.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        return received, f" ({exc.__class__.__name__}: {exc})"
    return received, ""


def _download(item: Planned, mirror: str | None) -> Expected:
    """Fetch into ``<path>.partial`` (resuming it), hash while writing, verify, then rename."""
    from tqdm import tqdm

    partial = item.path + ".partial"
    os.makedirs(os.path.dirname(item.path), exist_ok=True)
    kept = f"The partial file {partial} is kept: run the command again to resume. " if os.path.exists(partial) else ""
    response, hops, offset = _request(item, partial, mirror, kept + item.by_hand())
    expected = copy.deepcopy(item.expected)
    with response:
        _learn_from_headers(expected, response, hops)
        _record_etag(partial, response.headers.get("ETag"))
        hashers = _hashers(expected)
        if offset:
            _hash_file(partial, hashers, f"re-reading {os.path.basename(partial)}")
        with open(partial, "ab" if offset else "wb") as out, tqdm(
            total=expected.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=os.path.basename(item.path), file=sys.stderr,
        ) as bar:
            received, stopped = _copy(response, out, hashers, bar)
            out.flush()
            os.fsync(out.fileno())
        promised = response.headers.get("Content-Length", "")
    if not stopped and promised.isdigit() and received < int(promised):
        stopped = " (the connection closed early)"
    if stopped:
        raise DownloadError(
            f"the download of {item.label} stopped after {offset + received} of {expected.size or '?'} bytes{stopped}. "
            f"The partial file {partial} is kept: run the command again to resume. {item.by_hand()}"
        )
    digests = {kind: hasher.hexdigest() for kind, hasher in hashers.items()}
    problem = _mismatch(item.label, expected, os.path.getsize(partial), digests)
    if problem:
        _discard(partial)
        raise DownloadError(f"{problem}: the download is damaged and was deleted; run the command again.")
    os.replace(partial, item.path)
    _discard(partial)
    return expected


def _record_etag(partial: str, etag: str | None) -> None:
    """Keep the version's ETag beside the partial file, for the ``If-Range`` of a resume."""
    if etag:
        with open(partial + ".etag", "w", encoding="utf-8") as f:
            f.write(etag)
    elif os.path.exists(partial + ".etag"):
        os.remove(partial + ".etag")


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n, step = n / 1000, step + 1
    return f"{n:.0f} {units[step]}" if step == 0 else f"{n:.1f} {units[step]}"


def fetch(item: Planned, mirror: str | None = None) -> str:
    """Make ``item.path`` hold the verified file; returns the one-line summary."""
    if os.path.exists(item.path):
        problem, checked = _check_existing(item, mirror)
        if problem is None:
            return f"already there: {item.label} ({_size(os.path.getsize(item.path))}, {checked.describe()})"
        print(f"{problem}: removed, downloading it again", file=sys.stderr)
        os.remove(item.path)
    expected = _download(item, mirror)
    return f"downloaded: {item.label} ({_size(os.path.getsize(item.path))}, {expected.describe()})"


def _hub_listing(entry: HubRepo, models_dir: str, mirror: str | None) -> dict[str, dict]:
    """path -> tree entry of every file in the repo's main branch."""
    url = f"{HUB}/api/models/{entry.repo}/tree/main?recursive=true"
    hint = (f"To get the files by hand, download them from {HUB}/{entry.repo}/tree/main "
            f"into {os.path.join(models_dir, entry.dest)}")
    response, _ = _open(url, mirror, hint)
    with response:
        try:
            listing = json.load(response)
        except ValueError:
            raise DownloadError(f"{mirrored(url, mirror)} did not return the hub's JSON file listing. {hint}") from None
    return {item["path"]: item for item in listing if item.get("type") == "file"}


def plan_files(entry: UrlFile | HubRepo, models_dir: str, mirror: str | None) -> Iterator[Planned]:
    """The files of one manifest entry, with what the hub listing says about each."""
    if isinstance(entry, UrlFile):
        yield Planned(entry.url, os.path.join(models_dir, entry.dest), entry.dest, Expected())
        return
    listing = _hub_listing(entry, models_dir, mirror)
    names = list(entry.only) or wanted_files(list(listing))
    missing = [name for name in names if name not in listing]
    if missing:
        raise DownloadError(f"{HUB}/{entry.repo} no longer lists {', '.join(missing)}; the manifest needs updating.")
    for name in names:
        expected = Expected()
        lfs = listing[name].get("lfs") or {}
        expected.learn("size", lfs.get("size", listing[name].get("size")), "hub listing")
        expected.learn("sha256", lfs.get("oid"), "hub listing")
        label = f"{entry.dest}/{name}"
        yield Planned(f"{HUB}/{entry.repo}/resolve/main/{name}", os.path.join(models_dir, entry.dest, name), label, expected)


def download(model: str, dest: str | None = None, mirror: str | None = None) -> list[str]:
    """Fetch one MANIFEST entry into ``dest`` (ComfyUI's models/); returns the final paths."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror and (urlsplit(mirror).scheme not in ("http", "https") or not urlsplit(mirror).netloc):
        raise DownloadError(f"the mirror must be an http:// or https:// URL, got {mirror!r} (--mirror or {MIRROR_ENV}).")
    models_dir = os.path.abspath(os.path.expanduser(dest or default_models_dir()))
    try:
        os.makedirs(models_dir, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the models folder {models_dir} ({exc.strerror}); "
                            "pass --dest with ComfyUI's models/ folder or another writable one.") from None
    if not os.access(models_dir, os.W_OK):
        raise DownloadError(f"cannot write into {models_dir}; pass --dest with a writable ComfyUI models/ folder.")
    print(f"{model}: into {models_dir}" + (f" (through the mirror {mirror})" if mirror else ""), flush=True)
    paths = []
    for entry in MANIFEST[model]:
        print(f"{entry.dest}: {entry.what}; licence: {entry.licence}", flush=True)
        for item in plan_files(entry, models_dir, mirror):
            print(fetch(item, mirror), flush=True)
            paths.append(item.path)
    return paths
