"""``python -m kosmosg_core download kosmos-g|gill|sd15``: fetch the released weights, resumably.

Each file is written to ``<name>.partial`` beside its final name, checked against what its source
publishes (the size, and a sha256 or MD5 where the source gives one; no checksum is invented
here) and against what such a file must look like (a checkpoint is a zip or a pickle, never an
HTML page), and only then renamed into place. A file already under its final name is never
deleted or truncated: it is kept until a new one is complete and verified, and a failed or
refused download leaves it as it was. A rerun resumes an interrupted file with an HTTP ``Range``
request. ``--mirror URL`` (or ``KOSMOSG_DOWNLOAD_MIRROR``) fetches ``https://HOST/PATH?QUERY`` as
``URL/HOST/PATH?QUERY``.

Nothing waits forever: every request has a connect and read timeout (``TIMEOUT_S``, or
``KOSMOSG_DOWNLOAD_TIMEOUT`` seconds), a body stalled below ``LOW_SPEED_BYTES`` per second is
dropped, a body is read no further than its published size (or the manifest's per-file maximum
where nothing is published), and interrupted transfers are retried a bounded number of times.

Nothing is downloaded at import time, and downloaded files are only written, hashed and sniffed
here, never imported or unpickled.
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
import socket
import stat
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import TypeVar
from urllib.parse import urlsplit

from .errors import DownloadError
from .model_files import (  # noqa: F401  (download.MANIFEST etc. stay importable)
    GB,
    GILL_RELEASE,
    HUB,
    KB,
    KOSMOSG_CHECKPOINT,
    KOSMOSG_DATA,
    MANIFEST,
    MB,
    HubRepo,
    UrlFile,
    default_models_dir,
)

MIRROR_ENV = "KOSMOSG_DOWNLOAD_MIRROR"
TIMEOUT_ENV = "KOSMOSG_DOWNLOAD_TIMEOUT"  # seconds for a connection and for each read
ATTEMPTS_ENV = "KOSMOSG_DOWNLOAD_ATTEMPTS"  # tries per file (timeouts, dropped connections, HTTP 5xx)
RETRY_PAUSE_ENV = "KOSMOSG_DOWNLOAD_RETRY_PAUSE"  # seconds before the 2nd try, doubled for the 3rd...
CHUNK = 1 << 20
TIMEOUT_S = 60.0
ATTEMPTS = 3
RETRY_PAUSE_S = 2.0
LOW_SPEED_BYTES = 1024  # a body slower than this per second, over STALL_WINDOWS timeouts, is dropped
STALL_WINDOWS = 3
MAX_REDIRECTS = 10
LISTING_MAX_BYTES = 32 << 20  # the hub's JSON tree listing of one repo
HUB_MAX_FILES = 200  # files taken from one hub repo
SNIFF_TEXT_MAX = 64 << 20  # .json and .txt files are parsed whole to be checked
SAFETENSORS_HEADER_MAX = 100 << 20
HEAD_BYTES = 64  # enough of a body to tell an HTML page before anything is saved
USER_AGENT = "ComfyUI-KosmosG-download"


@dataclass
class Expected:
    """What the sources state about a file (None: nothing), and who stated it, for the messages.
    A later source that states something else is kept in ``conflicts``: the file is then refused."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    said_by: dict[str, str] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)

    def learn(self, kind: str, value: int | str | None, source: str) -> None:
        """Keep the first claim of each kind, so the hub listing outranks response headers."""
        if value is None:
            return
        known = getattr(self, kind)
        if known is None:
            setattr(self, kind, value)
            self.said_by[kind] = source
        elif known != value:
            stated = f"{known} bytes" if kind == "size" else f"{kind} {known}"
            self.conflicts.append(f"expected {stated} ({self.said_by[kind]}), got {value} ({source})")

    def kinds(self) -> list[str]:
        return [kind for kind in ("size", "sha256", "md5") if getattr(self, kind) is not None]

    def describe(self) -> str:
        if not self.kinds():
            return "not verified: the server stated no size or checksum; the content was checked"
        return "verified: " + ", ".join(f"{kind} ({self.said_by[kind]})" for kind in self.kinds())


@dataclass(frozen=True)
class Planned:
    """One file to fetch: where from, where to, what to check, and how to get it by hand."""

    url: str
    path: str
    label: str  # path relative to models/, for the messages
    expected: Expected
    max_bytes: int = 16 * GB
    states: tuple[str, ...] = ()

    @property
    def partial(self) -> str:
        return self.path + ".partial"

    def by_hand(self) -> str:
        return f"To get it by hand, download {self.url} and save it as {self.path}"


class _Retryable(DownloadError):
    """A failure another try may not meet: a timeout, a dropped connection, HTTP 5xx/408/429."""


class _RangeRefused(Exception):
    """HTTP 416: the partial file is not a prefix the server can continue."""


T = TypeVar("T")


def _setting(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise DownloadError(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}.")
    return value


def timeout_s() -> float:
    """Seconds allowed for a connection and for each read (``KOSMOSG_DOWNLOAD_TIMEOUT``)."""
    return _setting(TIMEOUT_ENV, TIMEOUT_S, 0.1, 3600)


def _attempts() -> int:
    return int(_setting(ATTEMPTS_ENV, ATTEMPTS, 1, 20))


def _retrying(what: str, step: Callable[[], T]) -> T:
    """``step()``, tried again (bounded, with a growing pause) when it fails in a way that may pass."""
    attempts, pause = _attempts(), _setting(RETRY_PAUSE_ENV, RETRY_PAUSE_S, 0, 600)
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except _Retryable as exc:
            if attempt == attempts:
                note = f" (tried {attempts} times)" if attempts > 1 else ""
                raise DownloadError(f"{exc}{note}") from None
            print(f"{what}: {str(exc).split('. ')[0]}; trying again ({attempt + 1} of {attempts})", file=sys.stderr)
            time.sleep(pause * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Send redirects through the mirror too, and keep each hop's headers: Hugging Face states
    an LFS file's sha256 (``X-Linked-Etag``) on the redirect, not on the CDN's final answer.
    Only http(s) targets, and at most ``MAX_REDIRECTS`` hops."""

    def __init__(self, mirror: str | None, first: str):
        self.mirror = mirror
        self.first = first
        self.hops: list[http.client.HTTPMessage] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.hops.append(headers)
        if len(self.hops) > MAX_REDIRECTS:
            raise DownloadError(f"{self.first} redirects more than {MAX_REDIRECTS} times (a redirect loop): "
                                "the server is misconfigured; try again later or use another --mirror.")
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise DownloadError(f"{self.first} redirects to {newurl[:200]!r}, which is not an http(s) URL: refused.")
        if self.mirror and not newurl.startswith(self.mirror.rstrip("/") + "/"):
            newurl = mirrored(newurl, self.mirror)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def mirrored(url: str, mirror: str | None) -> str:
    """``https://HOST/PATH?QUERY`` -> ``MIRROR/HOST/PATH?QUERY`` (unchanged without a mirror)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def wanted_files(paths: list[str]) -> list[str]:
    """Config, tokenizer and preprocessor files plus one weight format: ``*.safetensors`` when the
    repo has any, else ``pytorch_model*.bin``; never TF, Flax or ONNX files, nor subfolders."""
    top = [path for path in paths if "/" not in path]
    safetensors = [path for path in top if path.endswith(".safetensors")]
    weights = safetensors or [path for path in top if fnmatch(path, "pytorch_model*.bin")]
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    small = [path for path in top if path.endswith((".json", ".txt")) and not path.endswith(".index.json")]
    return sorted(small + weights + [index] * (index in top))


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, socket.timeout)) or "timed out" in str(exc)


def _open(url: str, mirror: str | None, hint: str, method: str = "GET", headers: dict | None = None):
    """Open ``url`` (through the mirror) with the connect/read timeout; network and HTTP failures
    become one-line DownloadErrors (``_Retryable`` for those another try may not meet)."""
    target = mirrored(url, mirror)
    redirects = _Redirects(mirror, target)
    request = urllib.request.Request(target, method=method, headers={
        "User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})})
    host, seconds = urlsplit(target).netloc, timeout_s()
    try:
        return urllib.request.build_opener(redirects).open(request, timeout=seconds), redirects.hops
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and headers and "Range" in headers:
            exc.close()
            raise _RangeRefused from None
        exc.close()
        if 300 <= exc.code < 400:
            raise DownloadError(f"{target} answered with redirects that lead nowhere (HTTP {exc.code}: a redirect "
                                "loop or no usable Location): the server is misconfigured; try again later or use "
                                f"another --mirror. {hint}") from None
        reason = " ".join(str(exc.reason).split())[:200]
        kind = _Retryable if exc.code >= 500 or exc.code in (408, 429) else DownloadError
        raise kind(f"{exc.url or target} answered HTTP {exc.code} {reason}. {hint}") from None
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if _is_timeout(reason) or _is_timeout(exc):
            raise _Retryable(f"{host} did not answer within {seconds:g} s ({TIMEOUT_ENV} sets the limit). "
                             f"{hint}") from None
        if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, ConnectionAbortedError)):
            raise _Retryable(f"{host} closed the connection without an answer. {hint}") from None
        if isinstance(reason, (http.client.HTTPException, ValueError)):
            text = " ".join(str(reason).split())[:200] or type(reason).__name__
            raise DownloadError(f"{host} sent a malformed HTTP answer ({type(reason).__name__}: {text}). "
                                f"{hint}") from None
        raise DownloadError(
            f"cannot reach {host} ({reason}): you seem to be offline or behind a proxy "
            f"(set HTTPS_PROXY, or pass --mirror URL / {MIRROR_ENV}). {hint}"
        ) from None


def _header(response, hops: list, name: str) -> str | None:
    """A header of the final response, else of the latest redirect hop that sent it."""
    for headers in [response.headers, *reversed(hops)]:
        if headers.get(name):
            return headers.get(name)
    return None


def _content_range(value: str | None) -> tuple[int, int, int] | None:
    """(first, last, total) of ``bytes FIRST-LAST/TOTAL``, or None when it is anything else."""
    match = re.fullmatch(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})", (value or "").strip())
    if not match:
        return None
    first, last, total = map(int, match.groups())
    return (first, last, total) if first <= last < total else None


def _digits(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() and len(value) <= 19 else None


def _learn_from_headers(expected: Expected, response, hops: list) -> None:
    """Size from Content-Length (Content-Range on a 206) and Hugging Face's X-Linked-Size, sha256
    from X-Linked-Etag, MD5 from Azure's Content-MD5 (x-ms-blob-content-md5 on a range, where
    Content-MD5 is the range's)."""
    partial = response.status == 206
    if partial:
        stated = _content_range(response.headers.get("Content-Range"))
        expected.learn("size", stated[2] if stated else None, "Content-Range")
    else:
        expected.learn("size", _digits(response.headers.get("Content-Length")), "Content-Length")
    expected.learn("size", _digits(_header(response, hops, "X-Linked-Size")), "X-Linked-Size")
    linked = (_header(response, hops, "X-Linked-Etag") or "").removeprefix("W/").strip('"').lower()
    expected.learn("sha256", linked if re.fullmatch(r"[0-9a-f]{64}", linked) else None, "X-Linked-Etag")
    md5_header = "x-ms-blob-content-md5" if partial else "Content-MD5"
    try:
        md5 = base64.b64decode(response.headers.get(md5_header, ""), validate=True)
    except (binascii.Error, ValueError):
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


def _looks_html(head: bytes) -> bool:
    """An HTML (or XML error) page: what a login wall, an error page or a captive portal sends."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n\f").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _html_type(content_type: str | None) -> bool:
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind in ("text/html", "application/xhtml+xml")


def _sniff(path: str, name: str, label: str) -> str | None:
    """Why the file at ``path`` cannot be a ``name`` (judged by its extension), or None.

    No hash can stand in for this where a source publishes none, and even with one it stops an
    HTML page from ever being reported as a checkpoint."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    lower = name.lower()
    if _looks_html(head):
        return f"{label} is an HTML page, not the file (a login, error or captive-portal page)"
    if size == 0:
        return f"{label} is empty"
    if lower.endswith((".pt", ".pth", ".pth.tar", ".bin", ".ckpt")):
        if head.startswith(b"PK\x03\x04") or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
            return None
        return f"{label} is neither a zip nor a pickle (it starts with {head[:8]!r}), so not a PyTorch checkpoint"
    if lower.endswith(".safetensors"):
        return _sniff_safetensors(path, size, head, label)
    if lower.endswith((".json", ".txt")):
        if size > SNIFF_TEXT_MAX:
            return f"{label} is {size:,} bytes, more than such a file can be"
        with open(path, "rb") as f:
            data = f.read(SNIFF_TEXT_MAX + 1)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"{label} is not UTF-8 text (byte {exc.start})"
        if "\0" in text:
            return f"{label} holds NUL bytes, so it is not a text file"
        if lower.endswith(".json"):
            try:
                json.loads(text)
            except (ValueError, RecursionError) as exc:
                return f"{label} is not valid JSON ({' '.join(str(exc).split())[:120]})"
        return None
    if lower.endswith(".model"):  # a SentencePiece ModelProto: field 1 (pieces), length-delimited
        return None if head[:1] == b"\x0a" else (
            f"{label} does not start like a SentencePiece model (it starts with {head[:8]!r})")
    return None


def _sniff_safetensors(path: str, size: int, head: bytes, label: str) -> str | None:
    bad = f"{label} is not a safetensors file"
    if size < 10:
        return f"{bad} (only {size} bytes)"
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length <= min(size - 8, SAFETENSORS_HEADER_MAX):
        return f"{bad} (its header length {length} does not fit the {size} bytes)"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return f"{bad} (its header is not JSON)"
    if not isinstance(header, dict):
        return f"{bad} (its header is not a JSON object)"
    data = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(entry.get("dtype") if isinstance(entry, dict) else None, str)
                and isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            return f"{bad} (the header entry {str(key)[:80]!r} is malformed or points past the data)"
    return None


def _regular_or_absent(path: str, what: str) -> bool:
    """Whether ``path`` exists (not following a final link for partial files is the caller's
    choice: this follows links); anything but a regular file is refused, never opened."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DownloadError(f"cannot read the {what} {path} ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise DownloadError(f"the {what} {path} is not a regular file (a folder, pipe or device): "
                            "move it away, then run the command again. Nothing was changed.")
    return True


def _hash_file(path: str, hashers: dict, desc: str, limit: int | None = None) -> None:
    """Feed a file already on disk (its first ``limit`` bytes) to the hashers, with a progress bar."""
    from tqdm import tqdm

    total = os.path.getsize(path) if limit is None else limit
    with open(path, "rb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=desc, file=sys.stderr, leave=False) as bar:
        left = total
        while left and (chunk := f.read(min(CHUNK, left))):
            for hasher in hashers.values():
                hasher.update(chunk)
            left -= len(chunk)
            bar.update(len(chunk))


def _check_existing(item: Planned, mirror: str | None) -> tuple[str | None, Expected]:
    """(None, what was checked) when the final file matches its sources, else (why not, ...).
    A HEAD request supplies the size and checksums when the manifest alone cannot (plain URLs);
    it only decides whether to download again, never what a download is checked against."""
    expected = copy.deepcopy(item.expected)
    if expected.size is None:
        try:
            response, hops = _open(item.url, mirror, "", method="HEAD")
        except DownloadError as exc:
            return f"{item.label}: its source could not be asked about it ({str(exc).split('. ')[0]})", expected
        with response:
            _learn_from_headers(expected, response, hops)
        if expected.conflicts:
            return f"{item.label}: its source contradicts itself ({expected.conflicts[0]})", expected
    size = os.path.getsize(item.path)
    problem = _mismatch(item.label, expected, size, {})
    if problem is None and size > item.max_bytes:
        problem = f"{item.label}: {size:,} bytes, more than the {item.max_bytes:,} this file can be"
    problem = problem or _sniff(item.path, item.path, item.label)
    hashers = _hashers(expected)
    if problem or not hashers:
        return problem, expected
    _hash_file(item.path, hashers, f"checking {os.path.basename(item.path)}")
    return _mismatch(item.label, expected, size, {kind: h.hexdigest() for kind, h in hashers.items()}), expected


def _usable_partial(item: Planned) -> int:
    """The size of the partial file to resume from (0: none, or it could not be a prefix)."""
    partial = item.partial
    try:
        info = os.lstat(partial)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode):
        raise DownloadError(f"{partial} is not a regular file (a link, folder, pipe or device), so it is not "
                            "an interrupted download: move it away, then run the command again. Nothing was changed.")
    limit = item.expected.size if item.expected.size is not None else item.max_bytes
    if info.st_size > limit:
        _discard(partial)
        return 0
    return info.st_size


def _request(item: Planned, mirror: str | None, hint: str):
    """GET the file, asking for the rest only when a partial file exists (``If-Range``: the rest of
    the same version, else the whole file). A range answered wrongly (416, a Content-Range that
    does not start at the partial file's end or does not parse) drops the partial file and asks
    once for the whole file. Returns (response, hops, offset to write at)."""
    offset, stated = _usable_partial(item), None
    for _ in range(2):
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            etag = _read_etag(item.partial)
            if etag and not etag.startswith("W/"):
                headers["If-Range"] = etag
        try:
            response, hops = _open(item.url, mirror, hint, headers=headers)
        except _RangeRefused:
            _discard(item.partial)
            offset = 0
            continue
        if response.status == 200:
            return response, hops, 0
        stated = response.headers.get("Content-Range")
        got = _content_range(stated)
        length = _digits(response.headers.get("Content-Length"))
        if (response.status == 206 and got and got[0] == offset and got[1] == got[2] - 1
                and (length is None or length == got[1] - got[0] + 1)):
            return response, hops, offset
        response.close()
        if response.status != 206:
            raise DownloadError(f"{mirrored(item.url, mirror)} answered HTTP {response.status}, not the file "
                                f"(200 or 206). {hint}")
        if not offset:
            break
        print(f"{item.label}: the server answered the resume at byte {offset} with Content-Range "
              f"{(stated or '')[:80]!r}; starting over", file=sys.stderr)
        _discard(item.partial)
        offset = 0
    raise DownloadError(f"{mirrored(item.url, mirror)} answered with a Content-Range that does not fit the request "
                        f"({(stated or 'none')[:80]!r}): the server is misbehaving; nothing was saved. {hint}")


def _read_etag(partial: str) -> str | None:
    path = partial + ".etag"
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as f:
            raw = f.read(1025)
    except OSError:
        return None
    text = raw.decode("ascii", "replace").strip()
    return text if 0 < len(text) <= 1024 and text.isprintable() else None


def _discard(partial: str) -> None:
    for path in (partial, partial + ".etag"):
        if os.path.lexists(path):
            os.remove(path)


def _record_etag(partial: str, etag: str | None) -> None:
    """Keep the version's ETag beside the partial file, for the ``If-Range`` of a resume."""
    from .safe_files import atomic_write_text

    path = partial + ".etag"
    if etag and len(etag) <= 1024 and etag.isprintable():
        atomic_write_text(path, etag)
    elif os.path.lexists(path):
        os.remove(path)


@dataclass
class _Body:
    received: int = 0
    stopped: str = ""  # why it stopped early (a retry may resume), "" when it ended
    refused: str = ""  # why it is not the file (the partial file is deleted)


def _copy(item: Planned, response, offset: int, limit: int, hashers: dict, bar, etag: str | None) -> _Body:
    """Stream the body after ``offset`` into the partial file and the hashers, never past ``limit``
    bytes in all. An HTML page is refused from its first bytes, before a file is created."""
    body, head, out = _Body(), b"", None
    seconds = timeout_s()
    window, window_start, window_bytes = STALL_WINDOWS * seconds, time.monotonic(), 0
    read = getattr(response, "read1", response.read)

    def write(data: bytes) -> None:
        nonlocal out
        if out is None:
            try:
                os.makedirs(os.path.dirname(item.partial), exist_ok=True)
            except OSError as exc:
                raise DownloadError(f"cannot create the folder {os.path.dirname(item.partial)} "
                                    f"({exc.strerror or exc}); pass --dest with a writable models/ folder.") from None
            _record_etag(item.partial, etag)
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if offset else os.O_TRUNC)
            out = os.fdopen(os.open(item.partial, flags, 0o644), "ab" if offset else "wb")
        out.write(data)
        for hasher in hashers.values():
            hasher.update(data)
        bar.update(len(data))

    try:
        while True:
            left = limit - offset - body.received
            try:
                chunk = read(min(CHUNK, left + 1))  # one byte past the limit tells an overlong body
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if left == 0:  # only the probe past a complete body failed: verification decides
                    break
                if _is_timeout(exc):
                    body.stopped = f" (no data for {seconds:g} s; {TIMEOUT_ENV} sets the limit)"
                else:
                    body.stopped = f" ({exc.__class__.__name__}: {' '.join(str(exc).split())[:160]})"
                break
            if not chunk:
                break
            if len(chunk) > left:
                body.refused = (f"{item.label}: the server sent more than the {limit} bytes "
                                f"{'stated for it' if limit != item.max_bytes else 'such a file can be'}")
                break
            if not offset and body.received < HEAD_BYTES and out is None:
                head += chunk
                body.received += len(chunk)
                if len(head) >= HEAD_BYTES:
                    if _looks_html(head):
                        body.refused = f"{item.label}: the server sent an HTML page, not the file"
                        break
                    write(head)
            else:
                body.received += len(chunk)
                write(chunk)
            window_bytes += len(chunk)
            now = time.monotonic()
            if now - window_start >= window:
                if window_bytes < LOW_SPEED_BYTES * (now - window_start):
                    body.stopped = (f" (the server sent under {LOW_SPEED_BYTES} bytes a second "
                                    f"for {now - window_start:.0f} s)")
                    break
                window_start, window_bytes = now, 0
        if out is None and head and not body.refused:
            if _looks_html(head):
                body.refused = f"{item.label}: the server sent an HTML page, not the file"
            elif not body.stopped:
                write(head)
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return body


def _attempt(item: Planned, mirror: str | None) -> Expected:
    """One GET into the partial file (resuming it), hashing while writing; verify, then rename."""
    from tqdm import tqdm

    partial = item.partial
    kept = f"The partial file {partial} is kept: run the command again to resume. " if os.path.exists(partial) else ""
    response, hops, offset = _request(item, mirror, kept + item.by_hand())
    expected = copy.deepcopy(item.expected)
    where = mirrored(item.url, mirror)
    with response:
        _learn_from_headers(expected, response, hops)
        refused = ""
        if _html_type(response.headers.get("Content-Type")):
            refused = (f"{item.label}: the server sent an HTML page "
                       f"(Content-Type {response.headers['Content-Type'][:60]}), not the file")
        elif expected.conflicts:
            refused = f"{item.label}: {expected.conflicts[0]}"
        elif response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
            refused = (f"{item.label}: the server sent it encoded "
                       f"({response.headers['Content-Encoding'][:40]}) though none was asked for")
        elif expected.size is not None and expected.size > item.max_bytes:
            refused = (f"{item.label}: the server states {expected.size:,} bytes, "
                       f"more than the {item.max_bytes:,} this file can be")
        elif missing := [kind for kind in item.states if getattr(expected, kind) is None]:
            refused = (f"{item.label}: the answer from {urlsplit(where).netloc} "
                       f"states no {' or '.join(missing)}, which "
                       "this source always publishes, so it is not that source")
        if refused:
            if offset:
                _discard(partial)
            raise DownloadError(f"{refused}: refused, nothing was saved; run the command again later or use "
                                f"another --mirror. {item.by_hand()}")
        limit = expected.size if expected.size is not None else item.max_bytes
        hashers = _hashers(expected)
        if offset:
            _hash_file(partial, hashers, f"re-reading {os.path.basename(partial)}", offset)
        with tqdm(total=expected.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=os.path.basename(item.path), file=sys.stderr) as bar:
            body = _copy(item, response, offset, limit, hashers, bar, response.headers.get("ETag"))
        promised = _digits(response.headers.get("Content-Length"))
    if body.refused:
        _discard(partial)
        raise DownloadError(f"{body.refused}: refused, nothing was saved; run the command again later or use "
                            f"another --mirror. {item.by_hand()}")
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    if not body.stopped and ((promised is not None and body.received < promised)
                             or (expected.size is not None and have < expected.size)):
        body.stopped = " (the connection closed early)"
    if body.stopped:
        if not have:
            _discard(partial)
        saved = (f"The partial file {partial} is kept: run the command again to resume." if have
                 else "Nothing was saved: run the command again.")
        raise _Retryable(f"the download of {item.label} stopped after {have} of {expected.size or '?'} "
                         f"bytes{body.stopped}. {saved} {item.by_hand()}")
    digests = {kind: hasher.hexdigest() for kind, hasher in hashers.items()}
    problem = _mismatch(item.label, expected, have, digests) or _sniff(partial, item.path, item.label)
    if problem:
        _discard(partial)
        raise DownloadError(f"{problem}: the download is damaged and was deleted; run the command again.")
    os.replace(partial, item.path)
    _discard(partial)
    return expected


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB")
    step = 0
    while n >= 1000 and step < len(units) - 1:
        n, step = n / 1000, step + 1
    return f"{n:.0f} {units[step]}" if step == 0 else f"{n:.1f} {units[step]}"


def fetch(item: Planned, mirror: str | None = None) -> str:
    """Make ``item.path`` hold the verified file; returns the one-line summary. An existing file
    stays untouched until a new one is complete and verified (a failed download leaves it)."""
    existing = _regular_or_absent(item.path, "existing file")
    if existing:
        problem, checked = _check_existing(item, mirror)
        if problem is None:
            return f"already there: {item.label} ({_size(os.path.getsize(item.path))}, {checked.describe()})"
        print(f"{problem}: downloading it again (the existing file stays until the new one is complete and "
              "verified)", file=sys.stderr)
    folders, folder = [], os.path.dirname(item.path)
    while folder and not os.path.lexists(folder):  # made only for a file that arrives
        folders.append(folder)
        folder = os.path.dirname(folder)
    try:
        expected = _retrying(item.label, lambda: _attempt(item, mirror))
    except DownloadError as exc:
        for made in folders:  # innermost first; a folder holding a resumable partial file stays
            try:
                os.rmdir(made)
            except OSError:
                break
        if existing:
            raise DownloadError(f"{exc} The existing {item.path} was left as it was.") from None
        raise
    return f"downloaded: {item.label} ({_size(os.path.getsize(item.path))}, {expected.describe()})"


def _read_listing(response, url: str, hint: str) -> bytes:
    data, read = b"", getattr(response, "read1", response.read)
    try:
        while chunk := read(min(CHUNK, LISTING_MAX_BYTES + 1 - len(data))):
            data += chunk
            if len(data) > LISTING_MAX_BYTES:
                raise DownloadError(f"{url} sent more than {LISTING_MAX_BYTES:,} bytes for a file listing. {hint}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _Retryable(f"{url} stopped sending the file listing ({type(exc).__name__}). {hint}") from None
    return data


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


def _hub_listing(entry: HubRepo, models_dir: str, mirror: str | None) -> dict[str, dict]:
    """path -> tree entry of every file in the repo's main branch (entries checked, names safe)."""
    url = f"{HUB}/api/models/{entry.repo}/tree/main?recursive=true"
    hint = (f"To get the files by hand, download them from {HUB}/{entry.repo}/tree/main "
            f"into {os.path.join(models_dir, entry.dest)}")

    def get() -> bytes:
        response, _ = _open(url, mirror, hint)
        with response:
            return _read_listing(response, mirrored(url, mirror), hint)

    data = _retrying(f"{entry.repo} listing", get)
    bad = f"{mirrored(url, mirror)} did not return the hub's JSON file listing"
    try:
        listing = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise DownloadError(f"{bad}. {hint}") from None
    if not isinstance(listing, list) or not all(isinstance(item, dict) for item in listing):
        raise DownloadError(f"{bad} (not a list of entries). {hint}")
    files = {}
    for item in listing:
        path = item.get("path")
        if item.get("type") != "file" or not isinstance(path, str):
            continue
        if not all(SAFE_NAME.fullmatch(part) for part in path.split("/")):
            continue  # never a name that could leave the folder or mean something else on disk
        files[path] = item
    return files


def _listed(entry: HubRepo, name: str, item: dict) -> Expected:
    """What the hub listing states about one file, checked to be a size and a sha256."""
    expected = Expected()
    lfs = item.get("lfs")
    size = lfs.get("size") if isinstance(lfs, dict) else item.get("size")
    oid = lfs.get("oid") if isinstance(lfs, dict) else None
    where = f"the hub listing of {entry.repo}"
    if type(size) is not int or size < 0:
        raise DownloadError(f"{where} gives {name} no usable size ({str(size)[:40]!r}); the listing is damaged.")
    if size > entry.max_bytes:
        raise DownloadError(f"{where} says {name} is {size:,} bytes, more than the {entry.max_bytes:,} it can be.")
    if lfs is not None and not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid)):
        raise DownloadError(f"{where} gives {name} no usable sha256 ({str(oid)[:80]!r}); the listing is damaged.")
    expected.learn("size", size, "hub listing")
    expected.learn("sha256", oid, "hub listing")
    return expected


def plan_files(entry: UrlFile | HubRepo, models_dir: str, mirror: str | None) -> Iterator[Planned]:
    """The files of one manifest entry, with what the hub listing says about each."""
    if isinstance(entry, UrlFile):
        yield Planned(entry.url, os.path.join(models_dir, entry.dest), entry.dest, Expected(), entry.max_bytes,
                      entry.states)
        return
    listing = _hub_listing(entry, models_dir, mirror)
    names = list(entry.only) or wanted_files(list(listing))
    missing = [name for name in names if name not in listing]
    if missing:
        raise DownloadError(f"{HUB}/{entry.repo} no longer lists {', '.join(missing)}; the manifest needs updating.")
    if len(names) > HUB_MAX_FILES:
        raise DownloadError(f"{HUB}/{entry.repo} lists {len(names)} files to fetch, more than the {HUB_MAX_FILES} "
                            "a model repo has: the listing is not the expected one.")
    for name in names:
        expected = _listed(entry, name, listing[name])
        label = f"{entry.dest}/{name}"
        yield Planned(f"{HUB}/{entry.repo}/resolve/main/{name}", os.path.join(models_dir, entry.dest, name), label,
                      expected, entry.max_bytes)


def download(model: str, dest: str | None = None, mirror: str | None = None) -> list[str]:
    """Fetch one MANIFEST entry into ``dest`` (ComfyUI's models/); returns the final paths."""
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror and (urlsplit(mirror).scheme not in ("http", "https") or not urlsplit(mirror).netloc):
        raise DownloadError(f"the mirror must be an http:// or https:// URL, got {mirror!r} "
                            f"(--mirror or {MIRROR_ENV}).")
    timeout_s(), _attempts(), _setting(RETRY_PAUSE_ENV, RETRY_PAUSE_S, 0, 600)  # a bad setting fails first
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
