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
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass

from PIL import Image

KINDS = ("caption", "edit", "composition", "interleaved")


@dataclass
class Sample:
    key: str
    meta: dict
    images: dict[str, Image.Image]

    @property
    def kind(self) -> str:
        return self.meta["kind"]


class ShardWriter:
    """Writes samples into ``{prefix}-{n:05d}.tar`` files of at most ``per_shard`` samples."""

    def __init__(self, directory: str, per_shard: int = 1000, prefix: str = "shard"):
        os.makedirs(directory, exist_ok=True)
        self.directory, self.per_shard, self.prefix = directory, per_shard, prefix
        self.count, self.tar, self.paths = 0, None, []

    def _add(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        self.tar.addfile(info, io.BytesIO(payload))

    def write(self, meta: dict, images: dict[str, Image.Image] | None = None) -> str:
        if meta.get("kind") not in KINDS:
            raise ValueError(f"sample kind must be one of {KINDS}, got {meta.get('kind')!r}")
        if self.count % self.per_shard == 0:
            self.close()
            path = os.path.join(self.directory, f"{self.prefix}-{self.count // self.per_shard:05d}.tar")
            self.tar, _ = tarfile.open(path, "w"), self.paths.append(path)
        key = f"{self.count:09d}"
        self._add(f"{key}.json", json.dumps(meta).encode("utf-8"))
        for name, image in (images or {}).items():
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            self._add(f"{key}.{name}.png", buffer.getvalue())
        self.count += 1
        return key

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ShardDataset:
    """Map-style reader over shards (random access by index, as the deterministic sampler needs)."""

    def __init__(self, paths: list[str] | str):
        if isinstance(paths, str):
            paths = sorted(os.path.join(paths, n) for n in os.listdir(paths) if n.endswith(".tar")) \
                if os.path.isdir(paths) else [paths]
        if not paths:
            raise FileNotFoundError("no .tar shards found")
        self.entries: list[tuple[str, str, dict[str, tarfile.TarInfo]]] = []
        self._open: dict[str, tarfile.TarFile] = {}
        for path in paths:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    key, _, rest = member.name.partition(".")
                    groups.setdefault(key, {})[rest] = member
            self.entries += [(path, key, files) for key, files in sorted(groups.items())]

    def __len__(self) -> int:
        return len(self.entries)

    def _tar(self, path: str) -> tarfile.TarFile:
        if path not in self._open:  # one handle per shard and process (workers re-open after fork)
            self._open[path] = tarfile.open(path)
        return self._open[path]

    def __getitem__(self, index: int) -> Sample:
        path, key, files = self.entries[index]
        tar = self._tar(path)
        meta = json.loads(tar.extractfile(files["json"]).read())
        images = {}
        for rest, member in files.items():
            if rest.endswith(".png"):
                images[rest[: -len(".png")]] = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
        return Sample(key, meta, images)
