"""Plain data -> training shards (see ``training/data.py`` for the layout).

    python -m training.convert_data --folder photos/ --out shards/          # x.png + x.txt caption pairs
    python -m training.convert_data --jsonl edits.jsonl --out shards/       # any kind, one JSON per line

JSONL lines hold the sample's JSON fields plus ``"images": {"target": "a.png", "source": ...}`` with
paths relative to the JSONL file, e.g.
``{"kind": "edit", "input_caption": "a house", "instruction": "add snow", "images": {"source": "h.png", "target": "h2.png"}}``.
"""

from __future__ import annotations

import argparse
import json
import os

from kosmosg_core.image_processing import load_image_file
from training.data import ShardWriter

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def from_folder(folder: str, writer: ShardWriter) -> int:
    count = 0
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        caption_path = os.path.join(folder, stem + ".txt")
        if ext.lower() in IMAGE_EXTENSIONS and os.path.isfile(caption_path):
            with open(caption_path, encoding="utf-8") as handle:
                caption = handle.read().strip()
            writer.write({"kind": "caption", "caption": caption}, {"target": load_image_file(os.path.join(folder, name))})
            count += 1
    return count


def from_jsonl(path: str, writer: ShardWriter) -> int:
    root, count = os.path.dirname(os.path.abspath(path)), 0
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            images = {k: load_image_file(os.path.join(root, v)) for k, v in record.pop("images", {}).items()}
            try:
                writer.write(record, images)
            except ValueError as exc:
                raise SystemExit(f"{path} line {line_no}: {exc}") from None
            count += 1
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder")
    source.add_argument("--jsonl")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-shard", type=int, default=1000)
    args = parser.parse_args(argv)
    with ShardWriter(args.out, args.per_shard) as writer:
        count = from_folder(args.folder, writer) if args.folder else from_jsonl(args.jsonl, writer)
    print(json.dumps({"samples": count, "shards": len(writer.paths), "out": args.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
