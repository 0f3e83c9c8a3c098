"""COCO collection on the real coco_tiny files, and on a file we build with every defect at once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlit.collect import COCO_COUNTERS, CocoCollector
from vlit.errors import ConfigError, InputFileError
from vlit.rundir import RunDir


def _tiny(coco_tiny: Path, **extra: Any) -> CocoCollector:
    return CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
        instances=coco_tiny / "annotations" / "instances_train2017.json",
        **extra,
    )


@pytest.fixture(scope="module")
def tiny_result(coco_tiny: Path):
    return _tiny(coco_tiny).collect()


@pytest.fixture(scope="module")
def tiny_raw(coco_tiny: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    annotations = coco_tiny / "annotations"
    captions = json.loads((annotations / "captions_train2017.json").read_text())
    instances = json.loads((annotations / "instances_train2017.json").read_text())
    return captions, instances


def test_coco_tiny_headline_counts(tiny_result) -> None:
    summary = tiny_result.summary
    assert (summary["images"], summary["captions"], summary["objects"]) == (50, 250, 470)
    assert len(tiny_result.records) == 50
    assert summary["images_missing_file"] == 0
    assert summary["images_unreadable"] == 0
    assert summary["duplicate_image_ids"] == 0
    assert summary["annotations_for_unlisted_images"] == 0


def test_coco_tiny_holes_match_counts_computed_from_the_raw_json(tiny_result, tiny_raw) -> None:
    captions, instances = tiny_raw
    listed = {str(image["id"]) for image in captions["images"] + instances["images"]}
    with_boxes = {str(a["image_id"]) for a in instances["annotations"]}
    crowd_ids = {a["id"] for a in instances["annotations"] if a["iscrowd"]}
    messy = [a for a in captions["annotations"] if a["caption"] != " ".join(a["caption"].split())]
    assert crowd_ids and messy and listed - with_boxes  # the real file has all three holes

    summary = tiny_result.summary
    assert summary["crowd_annotations"] == len(crowd_ids)
    assert summary["captions_whitespace_fixed"] == len(messy)
    assert summary["images_without_objects"] == len(listed - with_boxes)
    by_id = {r.image_id: r for r in tiny_result.records}
    for image_id in listed - with_boxes:
        assert by_id[image_id].objects == []
    # every image is in the instances file: an empty list means "none there", not "unknown"
    assert all(r.objects_annotated for r in tiny_result.records)
    crowd = [o for r in tiny_result.records for o in r.objects if o.iscrowd]
    assert {o.annotation_id for o in crowd} == crowd_ids


def test_coco_tiny_records_hold_the_right_annotations(tiny_result, tiny_raw, coco_tiny) -> None:
    captions, instances = tiny_raw
    per_image_captions = Counter(str(a["image_id"]) for a in captions["annotations"])
    per_image_objects = Counter(str(a["image_id"]) for a in instances["annotations"])
    categories = {c["id"]: c for c in instances["categories"]}
    first = instances["annotations"][0]
    images = {str(i["id"]): i for i in captions["images"]}
    for record in tiny_result.records:
        image = images[record.image_id]
        assert record.file_name == image["file_name"]
        assert (record.width, record.height) == (image["width"], image["height"])
        assert Path(record.image_root) == (coco_tiny / "train2017").absolute()
        assert record.path.is_file()
        assert len(record.captions) == per_image_captions[record.image_id]
        assert len(record.objects) == per_image_objects[record.image_id]
        for caption in record.captions:
            assert caption == caption.strip() and "\n" not in caption and "  " not in caption
    record = next(r for r in tiny_result.records if r.image_id == str(first["image_id"]))
    obj = next(o for o in record.objects if o.annotation_id == first["id"])
    assert obj.category == categories[first["category_id"]]["name"]
    assert obj.supercategory == categories[first["category_id"]]["supercategory"]
    assert obj.bbox == first["bbox"]
    assert obj.area == pytest.approx(first["area"])


def test_records_round_trip_through_the_run_directory(tiny_result, tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert run.write_records(tiny_result.records) == 50
    assert list(run.read_records()) == tiny_result.records


def test_every_counter_is_present_even_when_zero(tiny_result) -> None:
    for key in COCO_COUNTERS:
        assert isinstance(tiny_result.summary[key], int), key


# -- a COCO-format set we build ourselves, with every defect at once ----------------------------
def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def defect_set(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for name, size in {"1.jpg": (80, 60), "2.jpg": (80, 60), "3.jpg": (40, 40)}.items():
        Image.new("RGB", size, (90, 120, 30)).save(images / name)
    Image.new("RGB", (64, 48)).save(images / "9.jpg")
    Image.new("RGB", (50, 50)).save(images / "10.jpg")
    (images / "8.jpg").write_bytes(b"this is not a picture")
    captions = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 80, "height": 60},
            {"id": 2, "file_name": "2.jpg", "width": 80, "height": 60},
            {"id": 2, "file_name": "2-again.jpg", "width": 80, "height": 60},  # duplicate id
            {"id": 3, "file_name": "3.jpg", "width": 40, "height": 40},
            {"id": 6, "file_name": "../../etc/passwd", "width": 1, "height": 1},  # escapes
            {"id": 7, "file_name": "7.jpg", "width": 10, "height": 10},  # file missing
            {"id": 8, "file_name": "8.jpg", "width": 10, "height": 10},  # not an image
            {"id": 9, "file_name": "9.jpg", "width": 100, "height": 100},  # wrong size
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "caption": "A green square."},
            {"id": 12, "image_id": 1, "caption": "  A green\n square  on  grey. \n"},
            {"id": 13, "image_id": 2, "caption": "   \n "},  # empty
            {"id": 13, "image_id": 2, "caption": "Same id again."},  # duplicate annotation id
            {"id": 14, "image_id": 99, "caption": "Its image is not listed."},
            {"id": 15, "image_id": 3, "caption": "A small\tsquare."},
            {"id": 16, "image_id": 7, "caption": "Listed, but the file is gone."},
        ],
    }
    instances = {
        "images": [
            {"id": 1, "file_name": "1-other.jpg", "width": 80, "height": 60},  # conflicts
            {"id": 10, "file_name": "10.jpg", "width": 50, "height": 50},  # only listed here
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 44, "name": "bottle", "supercategory": "kitchen"},
        ],
        "annotations": [
            {"id": 101, "image_id": 1, "category_id": 44, "bbox": [1, 2, 10, 20], "iscrowd": 0},
            {"id": 102, "image_id": 1, "category_id": 44, "bbox": [30, 2, 10, 20], "iscrowd": 0},
            {
                "id": 103,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 30, 80, 30],
                "iscrowd": 1,
                "segmentation": {"counts": [0, 5, 10, 5], "size": [60, 80]},
            },
            {"id": 104, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},
            {"id": 105, "image_id": 2, "category_id": 999, "bbox": [5, 5, 9, 9], "iscrowd": 0},
            {"id": 101, "image_id": 2, "category_id": 1, "bbox": [5, 5, 9, 9], "iscrowd": 0},
            {"id": 106, "image_id": 77, "category_id": 1, "bbox": [5, 5, 9, 9], "iscrowd": 0},
            {"id": 107, "image_id": 10, "category_id": 1, "bbox": [5, 5, 9, 9], "iscrowd": 0},
        ],
    }
    questions = {
        "questions": [
            {"image_id": 1, "question": "How many bottles are there?", "question_id": 1000},
            {"image_id": 1, "question": "Is it green?", "question_id": 1001},
            {"image_id": 1, "question": "Is it green?", "question_id": 1001},  # duplicate
            {"image_id": 1, "question": "No answers were collected?", "question_id": 1002},
            {"image_id": 555, "question": "Unlisted image?", "question_id": 5550},
        ]
    }

    def answers(*texts: str) -> list[dict[str, Any]]:
        return [{"answer": t, "answer_id": i + 1} for i, t in enumerate(texts)]

    vqa_annotations = {
        "annotations": [
            {
                "question_id": 1000,
                "image_id": 1,
                "answers": answers(*(["2"] * 6 + ["two"] * 3 + ["3"])),
                "multiple_choice_answer": "2",
                "answer_type": "number",
            },
            {  # no multiple_choice_answer, and a 5-5 tie: "no" < "yes" alphabetically
                "question_id": 1001,
                "image_id": 1,
                "answers": answers(*(["yes"] * 5 + ["no"] * 5)),
                "answer_type": "yes/no",
            },
            {"question_id": 5550, "image_id": 555, "answers": answers("yes")},
            {"question_id": 7777, "image_id": 1, "answers": answers("orphan")},
        ]
    }
    coco_text = {
        "imgs": {"1": {"id": 1, "file_name": "1.jpg", "width": 80, "height": 60}},
        "anns": {
            "1": {"id": 1, "image_id": 1, "bbox": [2, 2, 20, 8], "utf8_string": "EXIT",
                  "legibility": "legible", "class": "machine printed", "language": "english"},
            "2": {"id": 2, "image_id": 1, "bbox": [40, 2, 20, 8], "legibility": "illegible",
                  "class": "handwritten", "language": "na"},
            "3": {"id": 3, "image_id": 1, "bbox": [2, 2, 20, 8], "utf8_string": "EXIT",
                  "legibility": "legible", "class": "machine printed", "language": "english"},
            "4": {"id": 4, "image_id": 1, "bbox": [9, 9, 5, 5], "utf8_string": " ",
                  "legibility": "legible", "class": "machine printed", "language": "english"},
            "5": {"id": 5, "image_id": 404, "bbox": [9, 9, 5, 5], "utf8_string": "far",
                  "legibility": "legible", "class": "machine printed", "language": "english"},
        },
        "imgToAnns": {"1": [1, 2, 3, 4], "404": [5]},
    }  # fmt: skip
    attributes = {
        "annotations": [
            {"annotation_id": 101, "attributes": ["Green", "glass", "green"]},
            {"annotation_id": 103, "attributes": ["standing"]},
            {"annotation_id": 9999, "attributes": ["lost"]},
        ]
    }
    return {
        "images_dir": images,
        "captions": _write(tmp_path / "captions.json", captions),
        "instances": _write(tmp_path / "instances.json", instances),
        "vqa_questions": _write(tmp_path / "questions.json", questions),
        "vqa_annotations": _write(tmp_path / "vqa_annotations.json", vqa_annotations),
        "coco_text": _write(tmp_path / "coco_text.json", coco_text),
        "attributes": _write(tmp_path / "attributes.json", attributes),
    }


def test_every_defect_at_once_is_counted_and_nothing_crashes(defect_set) -> None:
    result = CocoCollector(**defect_set).collect()
    summary = result.summary
    expected = {
        "images": 7,  # 1, 2, 3, 7, 8, 9 from captions + 10 from instances; 6 escapes
        "captions": 4,  # ids 11, 12, 15, 16
        "objects": 5,  # 101, 102, 103 (crowd), 104 (its box dropped), 107
        "vqa": 2,
        "ocr": 2,  # EXIT and the illegible one
        "attributes": 3,  # green, glass, standing
        "objects_with_attributes": 2,
        "records_with_problems": 5,  # 1 (conflict), 2 (empty, box, category), 7, 8, 9
        "duplicate_image_ids": 1,
        "images_conflicting_entries": 1,
        "images_path_escaping_root": 1,
        "duplicate_annotation_ids": 2,  # caption 13, instance 101
        "captions_for_unlisted_images": 1,
        "objects_for_unlisted_images": 1,
        "annotations_for_unlisted_images": 2,
        "captions_whitespace_fixed": 2,  # 12 and 15 (a tab)
        "captions_empty": 1,
        "crowd_annotations": 1,
        "objects_degenerate_box": 1,
        "objects_unknown_category": 1,
        "images_without_objects": 4,  # 3, 7, 8, 9
        "images_without_captions": 4,  # 2 (only an empty one), 8, 9, 10
        "images_missing_file": 1,
        "images_unreadable": 1,
        "images_size_mismatch": 1,
        "vqa_for_unlisted_images": 1,
        "vqa_questions_without_answers": 1,
        "vqa_answers_without_question": 1,
        "vqa_duplicate_question_ids": 1,
        "vqa_duplicate_annotation_question_ids": 0,
        "vqa_image_id_mismatch": 0,
        "ocr_for_unlisted_images": 1,
        "ocr_illegible": 1,
        "ocr_empty_text": 1,
        "ocr_duplicates": 1,
        "attributes_for_unknown_annotations": 1,
        "attributes_for_unlisted_images": 0,
        "attributes_unmatched_regions": 0,
    }
    assert set(expected) == set(COCO_COUNTERS)
    by_id = {r.image_id: r for r in result.records}
    assert list(by_id) == ["1", "2", "3", "7", "8", "9", "10"]
    assert {key: summary[key] for key in expected} == expected

    one, two = by_id["1"], by_id["2"]
    assert one.file_name == "1.jpg"  # the first listing wins over instances' 1-other.jpg
    assert one.captions == ["A green square.", "A green square on grey."]
    assert [o.category for o in one.objects] == ["bottle", "bottle", "person"]
    assert one.objects[2].iscrowd and one.objects[0].attributes == ["green", "glass"]
    assert one.objects[2].attributes == ["standing"]
    assert [(t.text, t.legible) for t in one.ocr] == [("EXIT", True), ("", False)]
    pairs = {p.question_id: p for p in one.vqa}
    assert pairs[1000].majority_answer == "2" and len(pairs[1000].answers) == 10
    assert pairs[1001].majority_answer == "no"
    assert two.objects[0].bbox is None
    assert any(p.startswith("degenerate_box") for p in two.problems)
    assert any(p.startswith("unknown_category") for p in two.problems)
    assert any(p.startswith("empty_caption") for p in two.problems)
    assert any(p.startswith("conflicting_entries") for p in one.problems)
    assert by_id["7"].problems == [f"missing_file: no image file at {by_id['7'].path}"]
    assert by_id["8"].problems[0].startswith("unreadable_image")
    assert by_id["9"].problems == ["size_mismatch: annotations say 100x100, the file is 64x48"]
    assert (by_id["9"].width, by_id["9"].height) == (100, 100)


# -- files that cannot be used at all -----------------------------------------------------------
def test_missing_captions_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as caught:
        CocoCollector(images_dir=tmp_path, captions=tmp_path / "nope.json").collect()
    assert "nope.json" in str(caught.value) and "not found" in str(caught.value)


def test_truncated_json_names_file_and_position(tmp_path: Path, coco_tiny: Path) -> None:
    text = (coco_tiny / "annotations" / "captions_train2017.json").read_text()
    broken = tmp_path / "captions.json"
    broken.write_text(text[: len(text) // 2])
    with pytest.raises(InputFileError) as caught:
        CocoCollector(images_dir=coco_tiny / "train2017", captions=broken).collect()
    message = str(caught.value)
    assert str(broken) in message and "not valid JSON at line" in message
    assert "Fix: re-download or re-export" in message and "\n" not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["annotations"][3].__setitem__("caption", 42), "annotations[3] (id"),
        (lambda d: d["images"][5].__setitem__("id", [1]), "images[5]: 'id' should be"),
        (lambda d: d["images"][0].__setitem__("width", "640"), "'width' should be an integer"),
        (lambda d: d.__setitem__("annotations", {}), "'annotations' should be a list"),
        (lambda d: d.pop("images"), "has no 'images'"),
    ],
)
def test_wrong_field_types_name_the_record(tmp_path: Path, coco_tiny: Path, change, expected):
    data = json.loads((coco_tiny / "annotations" / "captions_train2017.json").read_text())
    change(data)
    path = _write(tmp_path / "captions.json", data)
    with pytest.raises(InputFileError) as caught:
        CocoCollector(images_dir=coco_tiny / "train2017", captions=path).collect()
    assert expected in str(caught.value)
    assert str(path) in str(caught.value)


def test_instances_bad_bbox_is_fatal_with_its_record(tmp_path: Path, coco_tiny: Path) -> None:
    data = json.loads((coco_tiny / "annotations" / "instances_train2017.json").read_text())
    data["annotations"][7]["bbox"] = [1, 2, 3]
    path = _write(tmp_path / "instances.json", data)
    with pytest.raises(InputFileError) as caught:
        CocoCollector(
            images_dir=coco_tiny / "train2017",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
            instances=path,
        ).collect()
    annotation_id = data["annotations"][7]["id"]
    assert f"annotations[7] (id {annotation_id})" in str(caught.value)
    assert "[x, y, width, height]" in str(caught.value)


def test_vqa_needs_both_files(coco_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both"):
        _tiny(coco_tiny, vqa_questions=tmp_path / "q.json")


def test_missing_image_folder_is_fatal(coco_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="image folder does not exist"):
        CocoCollector(
            images_dir=tmp_path / "nowhere",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
        ).collect()


def test_progress_is_reported_to_the_callback(coco_tiny: Path) -> None:
    steps: list[tuple[str, int, int | None]] = []
    _tiny(coco_tiny).collect(lambda step, done, total: steps.append((step, done, total)))
    assert ("reading annotation files", 2, 2) in steps
    assert ("checking image files", 50, 50) in steps


def test_without_an_instances_file_objects_are_not_annotated(coco_tiny: Path) -> None:
    result = CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
    ).collect()
    assert not any(r.objects_annotated or r.objects for r in result.records)
