"""Benchmark datasets in their published layouts, as lists of ``EvalItem``.

Each loader checks the files it needs first and says which are missing and where to get them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
from dataclasses import dataclass, field

from ..errors import KosmosGError
from ..safe_files import read_text, regular_file


class DatasetError(KosmosGError):
    """A benchmark's files are missing or not in the published layout."""


@dataclass
class EvalItem:
    key: str  # output file stem, unique in the run
    prompt: str  # model input, with <i> where images go
    images: list[str] = field(default_factory=list)  # model input images, in placeholder order
    reference: str | None = None  # ground-truth / reference image for the image metrics
    text: str | None = None  # text for CLIP-T

    def __post_init__(self):
        if not is_safe_stem(self.key):  # keys come from annotation files and name the output files
            raise DatasetError(f"annotation id {self.key[:80]!r} cannot name an output file (only letters, digits, "
                               "'_', '-' and '.'): the annotation file is not the published one.")


def is_safe_stem(name: str) -> bool:
    """A file name stem that stays inside its folder (no separators, no '..', no hidden files)."""
    return bool(re.fullmatch(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,199}", name)) and ".." not in name


def _need(path: str, what: str, hint: str) -> str:
    if not os.path.exists(path):
        raise DatasetError(f"{what} not found: {path}. {hint}")
    if not os.path.isdir(path):  # a FIFO or device would block the read forever
        regular_file(path, what, DatasetError)
    return path


def _read_text(path: str, what: str, hint: str) -> str:
    return read_text(_need(path, what, hint), what, DatasetError, max_bytes=2 << 30)


@contextlib.contextmanager
def _layout(path: str, hint: str):
    """Entries of the wrong shape (a missing field, a string where a list belongs) name the file
    instead of escaping as a bare KeyError/TypeError."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:200]
        raise DatasetError(f"{path} does not have the published layout ({detail}): it is not the expected "
                           f"annotation file. {hint}") from None


def _read_json(path: str, what: str, hint: str, key: str | None = None):
    """The parsed file, or its top-level ``key`` (checked: a wrong file is named, not a KeyError)."""
    try:
        data = json.loads(_read_text(path, what, hint))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); {hint}") from None
    if key is None:
        return data
    if not isinstance(data, dict) or key not in data:
        raise DatasetError(f"{path} has no {key!r} entry: it is not the expected {what}. {hint}")
    return data[key]


# -- DreamBench (google/dreambooth dataset/) ---------------------------------------------------

DREAMBENCH_HINT = "Clone https://github.com/google/dreambooth and pass its dataset/ folder (or the clone)."
# The one reference image per subject that Kosmos-G keeps (scripts/remove_dreambench_multiimg.sh).
DREAMBENCH_REFERENCE = {
    "backpack": "02", "backpack_dog": "02", "bear_plushie": "03", "berry_bowl": "02", "can": "01", "candle": "02",
    "cat": "04", "cat2": "02", "clock": "03", "colorful_sneaker": "01", "dog": "02", "dog2": "02", "dog3": "05",
    "dog5": "00", "dog6": "02", "dog7": "01", "dog8": "04", "duck_toy": "01", "fancy_boot": "02",
    "grey_sloth_plushie": "04", "monster_toy": "04", "pink_sunglasses": "04", "poop_emoji": "00", "rc_car": "03",
    "red_cartoon": "00", "robot_toy": "00", "shiny_sneaker": "01", "teapot": "04", "vase": "02", "wolf_plushie": "04",
}
_COMMON = ["in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
           "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
           "with a blue house in the background", "on top of a purple rug in a forest"]
_ATTRIBUTES = ["red", "purple", "shiny", "wet", "cube shaped"]
# DreamBench's 25 prompts per subject kind, as "{} <context>" (after "a ") or attributes ("a red {}").
DREAMBENCH_CONTEXTS = {
    "object": _COMMON + ["with a wheat field in the background", "with a tree and autumn leaves in the background",
                         "with the Eiffel Tower in the background", "floating on top of water",
                         "floating in an ocean of milk", "on top of green grass with sunflowers around it",
                         "on top of a mirror", "on top of the sidewalk in a crowded street", "on top of a dirt road",
                         "on top of a white rug"],
    "live": _COMMON + ["wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf",
                       "wearing a black top hat and a monocle", "in a chef outfit", "in a firefighter outfit",
                       "in a police outfit", "wearing pink glasses", "wearing a yellow shirt",
                       "in a purple wizard outfit"],
}
LIVE_CLASSES = {"cat", "dog"}
PROMPT_STYLES = ("script", "paper")


def _dreambench_classes(dataset: str) -> dict[str, str]:
    """subject -> class word from prompts_and_classes.txt (``subject_name,class`` lines)."""
    path = _need(os.path.join(dataset, "prompts_and_classes.txt"), "DreamBench prompts_and_classes.txt",
                 DREAMBENCH_HINT)
    classes = {}
    for line in _read_text(path, "DreamBench prompts_and_classes.txt", DREAMBENCH_HINT).splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*,\s*([A-Za-z ]+?)\s*", line)
        if match and match.group(1) != "subject_name":
            classes[match.group(1)] = match.group(2)
    if not classes:
        raise DatasetError(f"{path} lists no 'subject_name,class' lines; {DREAMBENCH_HINT}")
    return classes


def _reference_image(folder: str, subject: str) -> str:
    pictures = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if len(pictures) == 1:  # remove_dreambench_multiimg.sh already ran
        return os.path.join(folder, pictures[0])
    wanted = DREAMBENCH_REFERENCE.get(subject)
    for name in pictures:
        if wanted is not None and os.path.splitext(name)[0] == wanted:
            return os.path.join(folder, name)
    if wanted is None and pictures:
        return os.path.join(folder, pictures[0])
    raise DatasetError(f"no reference image {wanted}.jpg for DreamBench subject {subject} in {folder}")


def dreambench_prompt(context: str, class_word: str, style: str) -> tuple[str, str]:
    """(model input, CLIP-T text) for one template. ``script``: the class word is dropped
    (``drop_object``), "a red {}" becomes "<i>, red"; ``paper``: the subject is "<i> <class>"."""
    subject = "<i>" if style == "script" else f"<i> {class_word}"
    if context in _ATTRIBUTES:
        return f"{subject}, {context}", f"a {context} {class_word}"
    return f"{subject} {context}", f"a {class_word} {context}"


def dreambench_items(root: str, style: str = "script", subjects: list[str] | None = None) -> list[EvalItem]:
    """30 subjects x 25 prompts, one reference image each (Kosmos-G's single-image protocol)."""
    dataset = os.path.join(root, "dataset") if os.path.isdir(os.path.join(root, "dataset")) else root
    classes = _dreambench_classes(dataset)
    if subjects:
        unknown = sorted(set(subjects) - set(classes))
        if unknown:
            raise DatasetError(f"unknown DreamBench subject(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(classes))}")
        classes = {s: classes[s] for s in subjects}
    items = []
    for subject, class_word in sorted(classes.items()):
        folder = _need(os.path.join(dataset, subject), f"DreamBench subject folder {subject!r}", DREAMBENCH_HINT)
        reference = _reference_image(folder, subject)
        kind = "live" if class_word in LIVE_CLASSES else "object"
        for number, context in enumerate(DREAMBENCH_CONTEXTS[kind] + _ATTRIBUTES):
            prompt, text = dreambench_prompt(context, class_word, style)
            items.append(EvalItem(f"{subject}_{number:02d}", prompt, [reference], reference, text))
    return items


# -- MS-COCO 2014 val captions ------------------------------------------------------------------

COCO_HINT = ("Get annotations_trainval2014.zip and val2014.zip from https://cocodataset.org "
             "and unzip both in one folder.")


def coco_captions(root: str, count: int = 30000, seed: int = 0) -> list[EvalItem]:
    """``count`` captions sampled (``random.Random(seed).sample``) from the val2014 annotations list."""
    data = _read_json(os.path.join(root, "annotations", "captions_val2014.json"), "COCO captions_val2014.json",
                      COCO_HINT)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not annotations:
        raise DatasetError(f"{root}/annotations/captions_val2014.json has no 'annotations' list; {COCO_HINT}")
    with _layout(os.path.join(root, "annotations", "captions_val2014.json"), COCO_HINT):
        chosen = random.Random(seed).sample(annotations, min(count, len(annotations)))
        return [EvalItem(f"{i:05d}_{a['id']}", a["caption"].strip(), text=a["caption"].strip())
                for i, a in enumerate(chosen)]


def coco_real_images(root: str) -> list[str]:
    """Every val2014 image (the official real set is all of them, not the sampled ones)."""
    folder = _need(os.path.join(root, "val2014"), "COCO val2014 image folder", COCO_HINT)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not files:
        raise DatasetError(f"{folder} holds no images; {COCO_HINT}")
    return files


# -- VIST (story-in-sequence val) ---------------------------------------------------------------

VIST_HINT = ("Get SIS-with-labels.tar.gz from https://visionandlanguage.net/VIST and the val images (GILL's "
             "evals/download_vist_images.py writes sis/val_formatted.json and sis/val_images/<id>.png).")
VIST_CONTEXTS = ("captions+images", "captions", "last-caption")


def _vist_stories(root: str) -> dict[str, list[dict]]:
    formatted = os.path.join(root, "val_formatted.json")
    if os.path.exists(formatted):
        stories = _read_json(formatted, "VIST val_formatted.json", VIST_HINT, "annotations")
        with _layout(formatted, VIST_HINT):
            return {str(k): [{"caption": str(s["caption"]), "image_id": str(s["image_id"])} for s in story]
                    for k, story in stories.items()}
    path = os.path.join(root, "val.story-in-sequence.json")
    raw = _read_json(path, "VIST val_formatted.json or val.story-in-sequence.json", VIST_HINT, "annotations")
    stories = collections.defaultdict(list)  # the grouping GILL's download script writes
    with _layout(path, VIST_HINT):
        for (ann,) in raw:
            stories[ann["story_id"]].append({"caption": str(ann["text"]), "image_id": str(ann["photo_flickr_id"])})
    return stories


def _find_image(folder: str, stem: str) -> str | None:
    if not is_safe_stem(stem):
        return None  # an id that would reach outside the image folder: the story is skipped
    for ext in (".png", ".jpg", ".jpeg"):
        if os.path.exists(os.path.join(folder, stem + ext)):
            return os.path.join(folder, stem + ext)
    return None


def vist_items(root: str, context: str = "captions+images") -> tuple[list[EvalItem], list[str]]:
    """Stories -> generate the 5th image from the context; returns (items, skipped story ids).

    ``captions+images`` (GILL's script): cap1 <i> cap2 <i> cap3 <i> cap4 <i> cap5; ``captions``:
    the five captions, space-joined; ``last-caption``: cap5 only. Stories with a missing
    image are skipped, as the script does."""
    root = os.path.join(root, "sis") if os.path.isdir(os.path.join(root, "sis")) else root
    images = _need(os.path.join(root, "val_images"), "VIST image folder val_images/", VIST_HINT)
    items, skipped = [], []
    for story_id, story in _vist_stories(root).items():
        captions = [s["caption"] for s in story]
        paths = [_find_image(images, s["image_id"]) for s in story]
        inputs = paths[:-1] if context == "captions+images" else []
        if any(p is None for p in inputs) or paths[-1] is None:
            skipped.append(story_id)
            continue
        if context == "captions+images":
            prompt = "".join(c + "<i>" for c in captions[:-1]) + captions[-1]
        elif context == "captions":
            prompt = " ".join(captions)
        else:
            prompt = captions[-1]
        items.append(EvalItem(str(story[-1]["image_id"]), prompt, inputs, paths[-1]))
    return items, skipped


# -- VisDial v1.0 val ---------------------------------------------------------------------------

VISDIAL_HINT = ("Get visdial_1.0_val.zip and VisualDialog_val2018.zip from https://visualdialog.org/data and "
                "unzip both in one folder.")


def visdial_items(root: str, rounds: int = 10) -> tuple[list[EvalItem], list[str]]:
    """Dialogues -> 'Q: q?\\nA: a' lines of the first ``rounds`` rounds (GILL's script: all 10)."""
    data = _read_json(os.path.join(root, "visdial_1.0_val.json"), "VisDial visdial_1.0_val.json", VISDIAL_HINT, "data")
    images = _need(os.path.join(root, "VisualDialog_val2018"), "VisDial image folder VisualDialog_val2018/",
                   VISDIAL_HINT)
    with _layout(os.path.join(root, "visdial_1.0_val.json"), VISDIAL_HINT):
        return _visdial_dialogues(data, images, rounds)


def _visdial_dialogues(data: dict, images: str, rounds: int) -> tuple[list[EvalItem], list[str]]:
    questions, answers = data["questions"], data["answers"]
    items, skipped = [], []
    for dialog in data["dialogs"]:
        image_id = str(dialog["image_id"]).rjust(12, "0")
        reference = os.path.join(images, f"VisualDialog_val2018_{image_id}.jpg")
        if not os.path.exists(reference):
            skipped.append(image_id)
            continue
        lines = []
        for turn in dialog["dialog"][:rounds]:
            lines += ["Q: " + questions[turn["question"]] + "?", "A: " + answers[turn["answer"]]]
        items.append(EvalItem(image_id, "\n".join(lines), [], reference))
    return items, skipped
