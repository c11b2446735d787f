"""Benchmark folders from elsewhere: every malformed annotation is one DatasetError naming the file,
no annotation id can name a file outside the results folder, nothing blocks on a FIFO."""

from __future__ import annotations

import json
import os

import pytest

from kosmosg_core.evaluation.datasets import (
    DatasetError,
    EvalItem,
    coco_captions,
    dreambench_items,
    visdial_items,
    vist_items,
)


def _coco(root, annotations_json):
    (root / "annotations").mkdir(parents=True)
    path = root / "annotations" / "captions_val2014.json"
    if isinstance(annotations_json, bytes):
        path.write_bytes(annotations_json)
    else:
        path.write_text(annotations_json)
    return root


@pytest.mark.parametrize("content,pattern", [
    (b"\xff\xfe{not utf8", r"not UTF-8"),
    ("[1, 2, 3]", r"no 'annotations' list"),
    ("{\"annotations\": \"text\"}", r"does not have the published layout"),
    ("{\"annotations\": [{\"id\": 1}]}", r"missing field 'caption'"),
    ("{\"annotations\": [{\"id\": 1, \"caption\": 7}]}", r"does not have the published layout"),
    ("{\"annotations\": [{\"id\": \"../../victim\", \"caption\": \"a dog\"}]}", r"cannot name an output file"),
    ("{" * 100000, r"not valid JSON"),
    ("{\"annotations\": [", r"not valid JSON"),
])
def test_coco_annotations(tmp_path, content, pattern):
    with pytest.raises(DatasetError, match=pattern):
        coco_captions(str(_coco(tmp_path, content)), count=5)


def test_coco_annotations_fifo_does_not_block(tmp_path):
    (tmp_path / "annotations").mkdir()
    os.mkfifo(tmp_path / "annotations" / "captions_val2014.json")
    with pytest.raises(DatasetError, match="named pipe"):
        coco_captions(str(tmp_path))


@pytest.mark.parametrize("data,pattern", [
    ({"data": []}, r"does not have the published layout"),
    ({"data": {"questions": [], "answers": [], "dialogs": [{"image_id": 1}]}}, r"does not have the published layout"),
    ({"data": {"questions": [], "answers": [], "dialogs": [{"image_id": 1, "dialog": [{"question": 5, "answer": 0}]}]}},
     r"list index out of range"),
    ({"dialogs": []}, r"has no 'data' entry"),
])
def test_visdial_annotations(tmp_path, data, pattern):
    (tmp_path / "VisualDialog_val2018").mkdir()
    (tmp_path / "VisualDialog_val2018" / "VisualDialog_val2018_000000000001.jpg").write_bytes(b"x")
    (tmp_path / "visdial_1.0_val.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=pattern):
        visdial_items(str(tmp_path))


def test_vist_ids_that_reach_outside_are_skipped(tmp_path):
    (tmp_path / "val_images").mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    story = [{"caption": f"c{i}", "image_id": "../secret"} for i in range(5)]
    (tmp_path / "val_formatted.json").write_text(json.dumps({"annotations": {"s1": story}}))
    items, skipped = vist_items(str(tmp_path))
    assert items == [] and skipped == ["s1"]


@pytest.mark.parametrize("annotations", [{"s1": [{"image_id": "1"}]}, {"s1": "not a list"}, {"s1": [["x"]]}])
def test_vist_malformed_stories(tmp_path, annotations):
    (tmp_path / "val_images").mkdir()
    (tmp_path / "val_formatted.json").write_text(json.dumps({"annotations": annotations}))
    with pytest.raises(DatasetError, match="does not have the published layout"):
        vist_items(str(tmp_path))


def test_dreambench_class_file_not_utf8(tmp_path):
    (tmp_path / "prompts_and_classes.txt").write_bytes(b"subject_name,class\n\xff\xfedog,dog\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        dreambench_items(str(tmp_path))


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", ".hidden", "a/b", "a\\b", "x" * 300, "", "a\x00b"])
def test_item_keys_never_name_a_path(key):
    with pytest.raises(DatasetError, match="cannot name an output file"):
        EvalItem(key, "a dog")
