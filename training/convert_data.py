"""Plain data -> training shards (see ``training/data.py`` for the layout).

    python -m training.convert_data --folder photos/ --out shards/          # x.png + x.txt caption pairs
    python -m training.convert_data --jsonl edits.jsonl --out shards/       # any kind, one JSON per line

JSONL lines hold the sample's JSON fields plus ``"images": {"target": "a.png", "source": ...}`` with
paths relative to the JSONL file, e.g.
``{"kind": "edit", "input_caption": "a house", "instruction": "add snow",
"images": {"source": "h.png", "target": "h2.png"}}`` (on one line).

Shards already in ``--out`` are kept unless ``--overwrite`` is given; the new shards appear only
when the whole conversion has succeeded. A bad input (unreadable image, a line that is not JSON or
misses its kind's fields) stops the conversion with one line naming it, and nothing is written.
"""

from __future__ import annotations

import json
import os
import sys

from kosmosg_core.errors import InputFileError, LimitError
from kosmosg_core.image_processing import load_image_file
from kosmosg_core.safe_files import read_text, refuse_input_as_output, regular_file
from training.data import KINDS, ShardWriter, layout_problem
from training.engine import UsageError, new_parser, run_main

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_CAPTION_BYTES = 1 << 20
MAX_LINE_BYTES = 16 << 20


def load_image(path: str):
    return load_image_file(regular_file(path, "image"))


def from_folder(folder: str, writer: ShardWriter, inputs: list[str] | None = None) -> int:
    count, empty = 0, []
    try:
        names = sorted(os.listdir(folder))
    except NotADirectoryError:
        raise InputFileError(f"--folder {folder} is not a folder.") from None
    except OSError as exc:
        raise InputFileError(f"cannot read --folder {folder}: {exc.strerror or exc}.") from None
    for name in names:
        stem, ext = os.path.splitext(name)
        caption_path = os.path.join(folder, stem + ".txt")
        if ext.lower() in IMAGE_EXTENSIONS and os.path.lexists(caption_path):
            caption = read_text(caption_path, "caption file", max_bytes=MAX_CAPTION_BYTES).strip()
            if not caption:
                empty.append(caption_path)
                continue
            image_path = os.path.join(folder, name)
            if inputs is not None:
                inputs += [caption_path, image_path]
            writer.write({"kind": "caption", "caption": caption}, {"target": load_image(image_path)})
            count += 1
    if empty:
        print(f"warning: skipped {len(empty)} image(s) with an empty caption file ({empty[0]}, ...).", file=sys.stderr)
    return count


def _record(path: str, line_no: int, raw: bytes) -> dict:
    where = f"{path} line {line_no}"
    if len(raw) > MAX_LINE_BYTES:
        raise LimitError(f"{where} is {len(raw):,} bytes long, more than any sample needs ({MAX_LINE_BYTES:,}).")
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{where} is not UTF-8 (byte {exc.start}).") from None
    except (ValueError, RecursionError) as exc:
        raise InputFileError(f"{where} is not JSON ({str(exc)[:200]}).") from None
    if not isinstance(record, dict):
        raise InputFileError(f"{where} is a JSON {type(record).__name__}, not an object with a \"kind\".")
    if record.get("kind") not in KINDS:
        raise InputFileError(f"{where}: sample kind must be one of {', '.join(KINDS)}, got {record.get('kind')!r}.")
    images = record.pop("images", {})
    if not isinstance(images, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                               for k, v in images.items()):
        raise InputFileError(f"{where}: \"images\" must map image names to file paths.")
    problem = layout_problem(record, set(images))
    if problem:
        raise InputFileError(f"{where}: not a valid {record['kind']} sample ({problem}); "
                             "see training/data.py for the layout.")
    record["images"] = images
    return record


def from_jsonl(path: str, writer: ShardWriter, inputs: list[str] | None = None) -> int:
    path = regular_file(path, "--jsonl file")
    root, count = os.path.dirname(os.path.abspath(path)), 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):  # bounded by the file
            if not raw.strip():
                continue
            record = _record(path, line_no, raw)
            image_paths = {k: os.path.join(root, v) for k, v in record.pop("images").items()}
            if inputs is not None:
                inputs += list(image_paths.values())
            writer.write(record, {k: load_image(v) for k, v in image_paths.items()})
            count += 1
    return count


def run(argv) -> int:
    parser = new_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder")
    source.add_argument("--jsonl")
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    args = parser.parse_args(argv)
    if args.per_shard < 1:
        raise UsageError(f"--per-shard must be at least 1, got {args.per_shard}.")
    given = args.folder or args.jsonl
    refuse_input_as_output(args.out, [given], "--out")
    inputs = [given]
    with ShardWriter(args.out, args.per_shard, overwrite=args.overwrite, inputs=inputs) as writer:
        count = from_folder(args.folder, writer, inputs) if args.folder else from_jsonl(args.jsonl, writer, inputs)
        if count == 0:
            raise InputFileError(f"no samples in {given}: expected image files with same-named .txt captions"
                                 if args.folder else f"no samples in {given}: the file has no JSON lines.")
    print(json.dumps({"samples": count, "shards": len(writer.paths), "out": args.out}))
    return 0


def main(argv=None) -> int:
    return run_main(run, argv, "training.convert_data")


if __name__ == "__main__":
    raise SystemExit(main())
