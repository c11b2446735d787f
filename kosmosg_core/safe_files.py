"""Reading and writing the user's files without losing, overwriting or waiting on any of them.

One place for the rules every entry point follows:

* inputs must be regular files (a FIFO, a device or a socket would block a read forever or never
  end), of a size we can check before reading;
* every write goes to a temporary file in the destination's folder and is renamed over the
  destination only once it is complete, so an interrupted run leaves the old file intact;
* an output is never one of the command's own inputs (same file under any path or link).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator

from .errors import InputFileError, OutputPathError


def describe_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def regular_file(path: str | os.PathLike, what: str = "file", error: type[Exception] = InputFileError,
                 max_bytes: int | None = None, hint: str = "") -> str:
    """``path`` as a string once it is known to be an existing regular file (links followed).

    Checked with ``stat`` (which never blocks), so a FIFO or device is refused before it is opened.
    ``max_bytes`` refuses files larger than anything legitimate of that kind.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}.{' ' + hint if hint else ''}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is {describe_kind(info.st_mode)}, not a regular file: pick the file itself.")
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} such a file can "
                    "need: it is not the expected file.")
    return path


def read_text(path: str | os.PathLike, what: str, error: type[Exception] = InputFileError,
              max_bytes: int = 64 << 20) -> str:
    """A small UTF-8 text file (JSON, dict.txt, captions) read in one go, with one-line errors."""
    path = regular_file(path, what, error, max_bytes=max_bytes)
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}): it is not the expected file.") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (links, ``..`` and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_input_as_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None],
                           flag: str = "the output", inside_folders: bool = True) -> None:
    """An output path that is one of the inputs (or, with ``inside_folders``, an existing file inside
    an input folder) would destroy it."""
    inputs = [item for item in inputs if item]
    for item in inputs:
        if same_file(output, item):
            raise OutputPathError(f"{flag} {output} is the input file {item}: writing it would destroy the "
                                  "input. Choose another output path.")
    out_real = os.path.realpath(output)
    for item in inputs if inside_folders else ():
        if os.path.isdir(item) and out_real.startswith(os.path.realpath(item) + os.sep) and os.path.exists(output):
            raise OutputPathError(f"{flag} {output} is a file inside the input folder {item}: writing it would "
                                  "change the input. Choose another output path.")


def refuse_existing(path: str | os.PathLike, flag: str = "--overwrite", what: str = "output") -> None:
    if os.path.lexists(path):
        raise OutputPathError(f"{what} {os.fspath(path)} already exists and is not overwritten: move it away, "
                              f"choose another path, or pass {flag}.")


def _temp_beside(path: str) -> tuple[int, str]:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        return tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: {exc.strerror or exc}. Choose a writable folder.") from None


def _publish(tmp: str, path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.unlink(tmp)
        raise OutputPathError(f"cannot write {path}: it is a folder. Give a file path.")
    os.chmod(tmp, 0o644 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator:
    """``open(path, mode)`` whose content appears at ``path`` only when the block ends cleanly."""
    path = os.fspath(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
        _publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """For writers that take a path (``safetensors.save_file``, ``PIL.Image.save``): ``write(tmp)``
    then rename. The temporary name keeps the destination's extension for writers that read it."""
    path = os.fspath(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    named = tmp + os.path.splitext(path)[1]
    try:
        os.replace(tmp, named)
        write(named)
        _publish(named, path)
    except BaseException:
        for leftover in (tmp, named):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
