"""Official ``.pt`` files are unpickled once, then loaded from a converted copy kept beside them.

Unpickling the fairseq file is the slow part of a first start. The converted safetensors goes to
``<model folder>/.kosmosg-cache/`` (persistent, unlike ComfyUI's temp folder, which is emptied at
every start), in the dtype being loaded (so later starts map it without a cast), named after the
source's identity (a MAC with a per-user secret key, see :func:`cache_name`) and that dtype; a replaced
file or another dtype is converted again and the old copy removed. A file planted in the cache folder
is never used, and a cached copy still passes every check a safetensors file gets. Its extension is
not one the loader dropdown lists. When that folder is not writable the
user cache (``~/.cache/kosmosg``) is used; when neither has room, the ``.pt`` is loaded directly.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import logging
import os
import secrets
import stat

import torch

from ..errors import CheckpointError
from .checkpoint import KIND_FINAL, Checkpoint, open_checkpoint

logger = logging.getLogger(__name__)

CACHE_FOLDER = ".kosmosg-cache"
CACHE_SUFFIX = ".kgcache"
DISABLE_ENV = "KOSMOSG_NO_CONVERT_CACHE"


def cache_folders(source: str) -> list[str]:
    return [os.path.join(os.path.dirname(os.path.abspath(source)), CACHE_FOLDER),
            os.path.join(os.path.expanduser("~"), ".cache", "kosmosg")]


KEY_FILE = "cache-key"


def _user_cache() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "kosmosg")


def _secret_key(create: bool) -> bytes | None:
    """This user's 32-byte cache key (``~/.cache/kosmosg/cache-key``, mode 0600), made on first use."""
    path = os.path.join(_user_cache(), KEY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.makedirs(_user_cache(), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
        except FileExistsError:  # another process made it meanwhile
            pass
        except OSError as exc:
            logger.warning("cannot create the converted-cache key %s (%s); the cache stays off", path, exc)
            return None
        return _secret_key(create=False)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        key = handle.read(64)
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 \
            or (hasattr(os, "getuid") and info.st_uid != os.getuid()) \
            or len(key) != 32:
        logger.warning("ignoring the converted-cache key %s: not a private 32-byte file of this user", path)
        return None
    return key


def cache_name(source: str, dtype: torch.dtype, create_key: bool = False) -> str | None:
    """The cache file name for ``source``: a MAC (this user's secret key) over the source's path, size,
    mtime, inode and device, so a file planted by anyone else (who lacks the key) is never picked up and a
    replaced source gets a new name; checked with one stat, never by re-hashing gigabytes at each start."""
    key = _secret_key(create_key)
    if key is None:
        return None
    info = os.stat(source)
    identity = f"{os.path.realpath(source)}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\0{info.st_dev}\0{dtype}"
    mac = hmac.new(key, identity.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:40]
    return f"{os.path.basename(source)}.{mac}.{str(dtype).removeprefix('torch.')}{CACHE_SUFFIX}"


def _ours(path: str) -> bool:
    """A regular file of this user that nobody else can write."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and not info.st_mode & 0o022 and (
        not hasattr(os, "getuid") or info.st_uid == os.getuid())


def find_cached(source: str, dtype: torch.dtype) -> str | None:
    """The converted copy of ``source`` in ``dtype`` if one is up to date, else None."""
    if os.environ.get(DISABLE_ENV) or source.endswith(".safetensors") or not os.path.isfile(source):
        return None
    name = cache_name(source, dtype)
    if name is None:
        return None
    for folder in cache_folders(source):
        path = os.path.join(folder, name)
        if _ours(path):
            return path
    return None


def convert_to_cache(checkpoint: Checkpoint, dtype: torch.dtype) -> str | None:
    """Write the converted copy of an opened official checkpoint; None when it cannot be cached."""
    from .convert import write_converted

    if os.environ.get(DISABLE_ENV) or checkpoint.format != "fairseq-pt" or checkpoint.kind != KIND_FINAL:
        return None
    name = cache_name(checkpoint.path, dtype, create_key=True)
    if name is None:
        return None
    for folder in cache_folders(checkpoint.path):
        try:
            os.makedirs(folder, exist_ok=True)
            prefix = glob.escape(os.path.basename(checkpoint.path))
            for stale in glob.glob(os.path.join(glob.escape(folder), prefix + ".*" + CACHE_SUFFIX)):
                if _ours(stale):
                    os.remove(stale)
            path = os.path.join(folder, name)
            write_converted(checkpoint, path, dtype=dtype)
            logger.info("converted %s once to %s; later loads read that file", checkpoint.path, path)
            return path
        except (OSError, CheckpointError) as exc:
            logger.warning("could not cache a converted copy in %s (%s)", folder, exc)
    return None


def open_cached(path: str, source: str) -> Checkpoint:
    """The cached file, reporting the source's path in messages and tokenizer searches."""
    cached = open_checkpoint(path)
    cached.source_path = source
    return cached


def open_preferring_cache(source: str, dtype: torch.dtype) -> Checkpoint:
    """Open the up-to-date converted copy of ``source`` if there is one, else ``source`` itself."""
    cached = find_cached(source, dtype)
    if cached is not None:
        try:
            return open_cached(cached, source)
        except CheckpointError as exc:
            logger.warning("ignoring a damaged converted copy %s (%s)", cached, exc)
            with contextlib.suppress(OSError):
                os.remove(cached)
    return open_checkpoint(source)
