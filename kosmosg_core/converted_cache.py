"""Official ``.pt`` files are unpickled once, then loaded from a converted copy kept beside them.

Unpickling the fairseq file is the slow part of a first start. The converted safetensors goes to
``<model folder>/.kosmosg-cache/`` (persistent, unlike ComfyUI's temp folder, which is emptied at
every start), in the dtype being loaded (so later starts map it without a cast), named after the
source's size and modification time and that dtype; a replaced file or another dtype is converted
again and the old copy removed. Its extension is not one the loader dropdown lists. When that folder is not writable the
user cache (``~/.cache/kosmosg``) is used; when neither has room, the ``.pt`` is loaded directly.
"""

from __future__ import annotations

import glob
import logging
import os

import torch

from .checkpoint import KIND_FINAL, Checkpoint, open_checkpoint
from .errors import CheckpointError

logger = logging.getLogger(__name__)

CACHE_FOLDER = ".kosmosg-cache"
CACHE_SUFFIX = ".kgcache"
DISABLE_ENV = "KOSMOSG_NO_CONVERT_CACHE"


def cache_folders(source: str) -> list[str]:
    return [os.path.join(os.path.dirname(os.path.abspath(source)), CACHE_FOLDER),
            os.path.join(os.path.expanduser("~"), ".cache", "kosmosg")]


def cache_name(source: str, dtype: torch.dtype) -> str:
    stat = os.stat(source)
    return f"{os.path.basename(source)}.{stat.st_size}-{stat.st_mtime_ns}.{str(dtype).removeprefix('torch.')}{CACHE_SUFFIX}"


def find_cached(source: str, dtype: torch.dtype) -> str | None:
    """The converted copy of ``source`` in ``dtype`` if one is up to date, else None."""
    if os.environ.get(DISABLE_ENV) or source.endswith(".safetensors") or not os.path.isfile(source):
        return None
    name = cache_name(source, dtype)
    for folder in cache_folders(source):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def convert_to_cache(checkpoint: Checkpoint, dtype: torch.dtype) -> str | None:
    """Write the converted copy of an opened official checkpoint; None when it cannot be cached."""
    from .convert import write_converted

    if os.environ.get(DISABLE_ENV) or checkpoint.format != "fairseq-pt" or checkpoint.kind != KIND_FINAL:
        return None
    name = cache_name(checkpoint.path, dtype)
    for folder in cache_folders(checkpoint.path):
        try:
            os.makedirs(folder, exist_ok=True)
            for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(os.path.basename(checkpoint.path)) + ".*" + CACHE_SUFFIX)):
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
            os.remove(cached)
    return open_checkpoint(source)
