"""Training data on disk: WebDataset-style tar shards, one documented layout per data kind.

A shard is a plain tar; the files of one sample share a key (``000123.json``, ``000123.target.png``,
...), which is the WebDataset convention, so shards stream with the ``webdataset`` library from
disk or object storage as well as with the reader here. Each sample's ``.json`` says its kind:

* ``caption``      ``{"kind": "caption", "caption": str}`` + ``target.png`` (optional for stage 2)
* ``edit``         ``{"kind": "edit", "input_caption": str, "instruction": str}`` + ``source.png``, ``target.png``
* ``composition``  ``{"kind": "composition", "caption": str, "entities": [{"name": str}, ...]}`` + ``target.png``,
                   ``crop{i}.png`` (entity with background) and ``crop{i}_white.png`` (background set to white)
* ``interleaved``  ``{"kind": "interleaved", "segments": [{"text": str} | {"image": "img0"}, ...]}`` + ``img{k}.png``

Images are stored as PNG; ``convert_data`` builds shards from a JSONL file or a folder of images
with same-named ``.txt`` captions.

Shards come from strangers, so the reader trusts nothing in them: it never extracts to disk (members
are read by offset from the tar, bounded by the file), reads only regular members with plain
relative names, and checks every sample's JSON against its layout and every image's header against
the pixel limit before training starts. What it cannot use is skipped and counted in one warning
per shard; a file that is not a tar at all is refused with one line naming it.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import tempfile
from collections import Counter
from dataclasses import dataclass

from PIL import Image

from kosmosg_core.errors import InputFileError, OutputPathError
from kosmosg_core.image_processing import MAX_IMAGE_PIXELS
from kosmosg_core.safe_files import refuse_input_as_output, regular_file

KINDS = ("caption", "edit", "composition", "interleaved")
MAX_JSON_BYTES = 16 << 20  # a sample's JSON: captions and entity lists, never more
MAX_IMAGE_BYTES = 256 << 20  # one encoded image
MAX_ASPECT = 64  # long side / short side: beyond this, resizing the short side to 512 makes a giant
SHARD_PREFIX = "shard"


@dataclass
class Sample:
    key: str
    meta: dict
    images: dict[str, Image.Image]

    @property
    def kind(self) -> str:
        return self.meta["kind"]


# -- the layout ------------------------------------------------------------------------------------
def _text(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")  # lone surrogates from "\ud800" in JSON cannot be tokenized
    except UnicodeEncodeError:
        return False
    return True


def layout_problem(meta, images, need_target: bool = False) -> str | None:
    """Why a sample does not follow its kind's layout (a short reason, used as a counter), or None.

    ``images`` are the names of the sample's images (``target``, ``crop0``, ...)."""
    if not isinstance(meta, dict):
        return "JSON is not an object"
    kind = meta.get("kind")
    if kind not in KINDS:
        return "unknown kind"
    if kind in ("caption", "composition"):
        if not _text(meta.get("caption")) or not meta["caption"].strip():
            return "no caption"
    if kind == "edit":
        if not _text(meta.get("input_caption")) or not _text(meta.get("instruction")) \
                or not meta["instruction"].strip():
            return "no input_caption/instruction"
        if "source" not in images:
            return "no source image"
    if kind == "composition":
        entities = meta.get("entities")
        if not isinstance(entities, list) or not all(isinstance(e, dict) and _text(e.get("name")) and e["name"]
                                                     for e in entities):
            return "bad entities"
        if any(f"crop{i}" not in images for i in range(len(entities))):
            return "missing entity crop"
    if kind == "interleaved":
        segments = meta.get("segments")
        if not isinstance(segments, list) or not segments:
            return "no segments"
        for segment in segments:
            if not isinstance(segment, dict):
                return "bad segment"
            if "image" in segment:
                if not isinstance(segment["image"], str) or segment["image"] not in images:
                    return "segment image missing"
            elif not _text(segment.get("text")):
                return "bad segment"
    if kind in ("edit", "composition") or need_target and kind != "interleaved":
        if "target" not in images:
            return "no target image"
    return None


# -- writing ---------------------------------------------------------------------------------------
def existing_shards(directory: str, prefix: str = SHARD_PREFIX) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                  if n.startswith(prefix + "-") and n.endswith(".tar"))


class ShardWriter:
    """Writes samples into ``{prefix}-{n:05d}.tar`` files of at most ``per_shard`` samples.

    Nothing appears under ``directory`` until the writer is closed without an error: every shard is
    written to a temporary file beside it and all are renamed into place at the end (a failed or
    interrupted conversion leaves the folder as it was). ``overwrite=False`` refuses a folder that
    already holds shards; with ``overwrite=True`` the old shards are replaced and any left over from
    a bigger earlier conversion removed. ``inputs`` are the command's input files: a shard path that
    is one of them is refused."""

    def __init__(self, directory: str, per_shard: int = 1000, prefix: str = SHARD_PREFIX, overwrite: bool = True,
                 inputs: list[str] | None = None):
        if per_shard < 1:
            raise ValueError(f"per_shard must be at least 1, got {per_shard}")
        if os.path.lexists(directory) and not os.path.isdir(directory):
            raise OutputPathError(f"output {directory} exists and is not a folder: give a folder for the shards.")
        if not overwrite and existing_shards(directory, prefix):
            first = os.path.basename(existing_shards(directory, prefix)[0])
            raise OutputPathError(f"output folder {directory} already holds shards ({first}, "
                                  "...) and they are not overwritten: choose another --out, or pass --overwrite.")
        os.makedirs(directory, exist_ok=True)
        # ``inputs`` is kept by reference: the caller adds each input file as it reads it
        self.directory, self.per_shard, self.prefix = directory, per_shard, prefix
        self.inputs = inputs if inputs is not None else []
        self.count, self.tar, self.paths = 0, None, []
        self._temps: list[str] = []

    def _add(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(payload))

    def write(self, meta: dict, images: dict[str, Image.Image] | None = None) -> str:
        if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
            kind = meta.get("kind") if isinstance(meta, dict) else meta
            raise ValueError(f"sample kind must be one of {KINDS}, got {kind!r}")
        problem = layout_problem(meta, set(images or {}))
        if problem:
            raise ValueError(f"a {meta['kind']} sample needs its layout (training/data.py): {problem}")
        if self.count % self.per_shard == 0:
            self._finish_tar()
            path = os.path.join(self.directory, f"{self.prefix}-{self.count // self.per_shard:05d}.tar")
            fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial",
                                        dir=self.directory)
            self._temps.append(temp)
            self.paths.append(path)
            self.tar = tarfile.open(fileobj=os.fdopen(fd, "wb"), mode="w")
        key = f"{self.count:09d}"
        self._add(f"{key}.json", json.dumps(meta).encode("utf-8"))
        for name, image in (images or {}).items():
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self._add(f"{key}.{name}.png", buffer.getvalue())
        self.count += 1
        return key

    def _finish_tar(self) -> None:
        if self.tar is not None:
            handle = self.tar.fileobj
            self.tar.close()
            handle.close()
            self.tar = None

    def discard(self) -> None:
        """Drop everything written so far (the folder is left as it was)."""
        if self.tar is not None:
            self.tar.fileobj.close()
            self.tar = None
        for temp in self._temps:
            try:
                os.unlink(temp)
            except OSError:
                pass
        self._temps, self.paths = [], []

    def close(self) -> None:
        """Publish the shards (rename into place) and remove stale shards of an earlier conversion."""
        self._finish_tar()
        for path in self.paths:
            refuse_input_as_output(path, self.inputs, "shard")
        stale = [p for p in existing_shards(self.directory, self.prefix) if p not in self.paths]
        umask = os.umask(0)
        os.umask(umask)
        for temp, path in zip(self._temps, self.paths, strict=True):
            os.chmod(temp, 0o644 & ~umask)
            os.replace(temp, path)
        self._temps = []
        for path in stale:
            os.unlink(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


# -- reading ---------------------------------------------------------------------------------------
def shard_paths(data: list[str] | str) -> list[str]:
    """The shard files of ``--data`` (a shard, a folder of ``*.tar`` or a list), each a regular file."""
    if isinstance(data, (str, os.PathLike)):
        data = os.fspath(data)
        if os.path.isdir(data):
            try:
                names = sorted(os.listdir(data))
            except OSError as exc:
                raise InputFileError(f"cannot read the data folder {data}: {exc.strerror or exc}.") from None
            paths = [os.path.join(data, n) for n in names if n.endswith(".tar") and not n.startswith(".")]
            if not paths:
                raise InputFileError(f"no .tar shards found in {data}: make them with python -m training.convert_data.")
        else:
            paths = [data]
    else:
        paths = [os.fspath(p) for p in data]
        if not paths:
            raise InputFileError("no .tar shards given.")
    return [regular_file(p, "shard") for p in paths]


def _member_problem(member: tarfile.TarInfo, file_size: int) -> str | None:
    name = member.name
    if member.issym() or member.islnk():
        return "link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    if member.isdir():
        return "folder"
    if not member.isreg() or member.issparse():
        return "not a regular file"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name or "\x00" in name:
        return "absolute name"
    if ".." in name.split("/"):
        return "'..' in the name"
    if member.size < 0 or member.offset_data + member.size > file_size:
        return "size beyond the end of the shard"
    return None


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset key and suffix: ``dir/000123.target.png`` -> (``dir/000123``, ``target.png``)."""
    folder, _, base = name.rpartition("/")
    stem, _, rest = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), rest


def _summary(counts: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.most_common())


class ShardDataset:
    """Map-style reader over shards (random access by index, as the deterministic sampler needs).

    ``kinds``: the sample kinds the caller trains on (others are skipped and counted);
    ``need_target``: samples of those kinds must have a ``target`` image (interleaved excepted)."""

    def __init__(self, paths: list[str] | str, kinds: tuple[str, ...] = KINDS, need_target: bool = False,
                 warn=None):
        warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.paths = shard_paths(paths)
        self.entries: list[tuple[str, str, dict[str, tarfile.TarInfo], dict]] = []
        self._open: dict[str, tarfile.TarFile] = {}
        self.limit = MAX_IMAGE_PIXELS
        total_skipped: Counter = Counter()
        for path in self.paths:
            members_skipped, samples_skipped = Counter(), Counter()
            tar = self._tar(path)
            file_size = os.fstat(tar.fileobj.fileno()).st_size
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            members = []
            while True:  # each header moves on by at least 512 bytes: bounded by the file
                try:
                    member = tar.next()
                except (tarfile.TarError, EOFError, ValueError) as exc:
                    if not members:
                        raise InputFileError(f"shard {path} is damaged ({exc}): make it again or remove it "
                                             "from --data.") from None
                    members_skipped["shard ends early: the rest"] += 1
                    break
                if member is None:
                    break
                members.append(member)
            for member in members:
                problem = _member_problem(member, file_size)
                if problem:
                    members_skipped[problem] += 1
                    continue
                key, rest = _split_name(member.name)
                groups.setdefault(key, {})[rest] = member
            for key, files in sorted(groups.items()):
                meta, problem = self._check_sample(tar, files, kinds, need_target)
                if problem:
                    samples_skipped[problem] += 1
                else:
                    self.entries.append((path, key, files, meta))
            if members_skipped or samples_skipped:
                parts = []
                if members_skipped:
                    parts.append(f"{sum(members_skipped.values())} member(s) ({_summary(members_skipped)})")
                if samples_skipped:
                    parts.append(f"{sum(samples_skipped.values())} sample(s) ({_summary(samples_skipped)})")
                warn(f"warning: shard {path}: skipped {' and '.join(parts)}; they are never read.")
            total_skipped += samples_skipped
        if not self.entries:
            extra = f" ({_summary(total_skipped)})" if total_skipped else ""
            more = " ..." if len(self.paths) > 3 else ""
            raise InputFileError(f"no usable samples in {', '.join(self.paths[:3])}{more}"
                                 f"{extra}: expected {'/'.join(kinds)} samples in the layout of training/data.py.")

    def _check_sample(self, tar: tarfile.TarFile, files: dict, kinds, need_target) -> tuple[dict | None, str | None]:
        member = files.get("json")
        if member is None:
            return None, "without JSON"
        if member.size > MAX_JSON_BYTES:
            return None, "JSON too large"
        data = tar.extractfile(member).read(MAX_JSON_BYTES + 1)
        try:
            meta = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            return None, "JSON not UTF-8"
        except (ValueError, RecursionError):
            return None, "JSON not valid"
        if not isinstance(meta, dict):
            return None, "JSON is not an object"
        if meta.get("kind") in KINDS and meta["kind"] not in kinds:
            return None, f"of kind {meta['kind']} (not trained here)"
        images = {rest[: -len(".png")] for rest in files if rest.endswith(".png")}
        problem = layout_problem(meta, images, need_target)
        if problem:
            return None, problem
        for rest, image_member in files.items():
            if rest.endswith(".png"):
                problem = self._image_header_problem(tar, image_member)
                if problem:
                    return None, problem
        return meta, None

    def _image_header_problem(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
        if member.size > MAX_IMAGE_BYTES:
            return "image file too large"
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(tar.extractfile(member)) as image:  # reads the header only
                    width, height = image.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return "image with too many pixels"
        except Exception:  # noqa: BLE001 - whatever Pillow raises for a bad header: not an image
            return "unreadable image"
        if width < 1 or height < 1:
            return "unreadable image"
        if width * height > self.limit:
            return "image with too many pixels"
        if max(width, height) > MAX_ASPECT * min(width, height):
            return f"image more than {MAX_ASPECT}:1"
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def _tar(self, path: str) -> tarfile.TarFile:
        if path not in self._open:  # one handle per shard and process (workers re-open after fork)
            try:
                # "r:" = uncompressed only: a compressed "shard" could be a decompression bomb
                self._open[path] = tarfile.open(path, "r:")
            except (tarfile.TarError, EOFError, ValueError) as exc:
                raise InputFileError(f"shard {path} is not a tar file ({exc}): give uncompressed .tar shards "
                                     "(python -m training.convert_data makes them).") from None
        return self._open[path]

    def kind_of(self, index: int) -> str:
        return self.entries[index][3]["kind"]

    def meta_of(self, index: int) -> dict:
        return self.entries[index][3]

    def __getitem__(self, index: int) -> Sample:
        path, key, files, meta = self.entries[index]
        tar = self._tar(path)
        images = {}
        for rest, member in files.items():
            if rest.endswith(".png"):
                images[rest[: -len(".png")]] = decode_image(tar.extractfile(member).read(member.size),
                                                            f"{path} member {member.name}")
        return Sample(key, json.loads(json.dumps(meta)), images)


def decode_image(data: bytes, where: str) -> Image.Image:
    """Encoded image bytes from a shard -> RGB by the library's image rules (pixel limit from the
    header, bombs, EXIF applied, ``to_rgb``), errors naming the shard member."""
    from kosmosg_core.image_processing import decode_image as decode
    from kosmosg_core.image_processing import to_rgb

    return to_rgb(decode(io.BytesIO(data), where))
