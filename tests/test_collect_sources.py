"""VQA v2, COCO-Text (both formats) and attribute files, on real samples and files we write."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vlit.collect import CocoCollector
from vlit.collect.attributes import box_iou, load_attributes
from vlit.collect.coco_text import load_coco_text
from vlit.collect.vqa import load_vqa, majority_answer
from vlit.errors import InputFileError


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _captions_listing(path: Path, image_ids: list[int], name: str = "img_{:012d}.jpg") -> Path:
    """A COCO captions file that lists ``image_ids`` (one caption each, no image sizes)."""
    return _write(
        path,
        {
            "images": [{"id": i, "file_name": name.format(i)} for i in image_ids],
            "annotations": [
                {"id": n, "image_id": i, "caption": f"Picture {i}."}
                for n, i in enumerate(image_ids)
            ],
        },
    )


# -- VQA v2 (real sample: the first 100 questions of val2014) ----------------------------------
@pytest.fixture(scope="module")
def vqa_dir(shared_data: Path) -> Path:
    return shared_data / "formats" / "vqa_v2"


@pytest.fixture(scope="module")
def vqa_files(vqa_dir: Path) -> tuple[Path, Path]:
    return (
        vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.first100.json",
        vqa_dir / "v2_mscoco_val2014_annotations.first100.json",
    )


def test_vqa_real_sample_joins_all_100_questions(vqa_files, tmp_path: Path) -> None:
    questions, annotations = vqa_files
    counts: Counter[str] = Counter()
    pairs = load_vqa(questions, annotations, counts)
    raw = json.loads(annotations.read_text())["annotations"]
    raw_questions = {q["question_id"]: q for q in json.loads(questions.read_text())["questions"]}
    assert len(pairs) == 19 and sum(len(p) for p in pairs.values()) == 100
    assert not +counts  # nothing was wrong with the real sample
    by_question = {p.question_id: p for ps in pairs.values() for p in ps}
    for entry in raw:
        pair = by_question[entry["question_id"]]
        assert pair.answers == [a["answer"] for a in entry["answers"]]
        assert len(pair.answers) == 10
        assert pair.majority_answer == entry["multiple_choice_answer"]
        assert pair.answer_type == entry["answer_type"]
        assert pair.question == raw_questions[entry["question_id"]]["question"]


def test_vqa_real_sample_through_the_collector(vqa_dir, vqa_files, tmp_path: Path) -> None:
    questions, annotations = vqa_files
    per_image = Counter(q["image_id"] for q in json.loads(questions.read_text())["questions"])
    image_ids = sorted(per_image)
    listed = image_ids[:10]  # the other nine images are not listed: their questions are counted
    captions = _captions_listing(tmp_path / "captions.json", listed, "COCO_val2014_{:012d}.jpg")
    result = CocoCollector(
        images_dir=vqa_dir / "images",
        captions=captions,
        vqa_questions=questions,
        vqa_annotations=annotations,
    ).collect()
    summary = result.summary
    assert summary["vqa"] == sum(per_image[i] for i in listed)
    assert summary["vqa_for_unlisted_images"] == sum(per_image[i] for i in image_ids[10:])
    on_disk = {int(p.name[-16:-4]) for p in (vqa_dir / "images").glob("*.jpg")}
    assert summary["images_missing_file"] == len(set(listed) - on_disk)
    for record in result.records:
        assert len(record.vqa) == per_image[int(record.image_id)]
        if int(record.image_id) in on_disk:  # the size, absent from the listing, is read
            with Image.open(record.path) as image:
                assert (record.width, record.height) == image.size
            assert not record.problems
        else:
            assert record.problems == [f"missing_file: no image file at {record.path}"]


def test_majority_answer_counts_and_breaks_ties_alphabetically() -> None:
    assert majority_answer(["down", "table", "down", "skateboard"]) == "down"
    assert majority_answer(["yes", "no", "no", "yes"]) == "no"
    assert majority_answer(["b", "a"]) == majority_answer(["a", "b"]) == "a"
    assert majority_answer([]) == ""


def test_vqa_annotation_without_answers_list_is_fatal(vqa_files, tmp_path: Path) -> None:
    questions, annotations = vqa_files
    data = json.loads(annotations.read_text())
    data["annotations"][4]["answers"] = "down"
    broken = _write(tmp_path / "annotations.json", data)
    with pytest.raises(InputFileError) as caught:
        load_vqa(questions, broken, Counter())
    qid = data["annotations"][4]["question_id"]
    assert f"annotations[4] (question_id {qid})" in str(caught.value)


# -- COCO-Text ---------------------------------------------------------------------------------
def test_coco_text_real_results_format_sample(shared_data: Path) -> None:
    path = shared_data / "formats" / "coco_text" / "coco_text_results_format_sample.json"
    raw = json.loads(path.read_text())
    counts: Counter[str] = Counter()
    texts = load_coco_text(path, counts)
    assert sum(len(t) for t in texts.values()) == len(raw) == 8
    assert Counter({k: len(v) for k, v in texts.items()}) == Counter(
        str(e["image_id"]) for e in raw
    )
    first = texts[str(raw[0]["image_id"])][0]
    assert (first.text, first.bbox, first.legible) == (
        raw[0]["utf8_string"],
        [float(v) for v in raw[0]["bbox"]],
        True,
    )


def test_coco_text_results_sample_through_the_collector(shared_data: Path, tmp_path: Path):
    path = shared_data / "formats" / "coco_text" / "coco_text_results_format_sample.json"
    images = tmp_path / "images"
    images.mkdir()
    captions = _captions_listing(tmp_path / "captions.json", [359104, 245823])
    result = CocoCollector(images_dir=images, captions=captions, coco_text=path).collect()
    assert result.summary["ocr"] == 7 and result.summary["ocr_for_unlisted_images"] == 1
    texts = {r.image_id: [t.text for t in r.ocr] for r in result.records}
    assert texts["359104"] == ["nooo", "clo", "parking", "fri", "ayoooooo", "ma"]


def test_coco_text_dataset_format(tmp_path: Path) -> None:
    data = {
        "cats": {},
        "info": {"version": "1.4"},
        "imgs": {"42": {"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "set": "train"}},
        "imgToAnns": {"42": [7, 8, 9]},
        "anns": {
            "7": {"id": 7, "image_id": 42, "bbox": [10.5, 20, 30, 12], "utf8_string": "STOP",
                  "legibility": "legible", "class": "machine printed", "language": "english",
                  "area": 360.0, "mask": [10.5, 20, 40.5, 20, 40.5, 32, 10.5, 32]},
            "8": {"id": 8, "image_id": 42, "bbox": [50, 20, 30, 12], "legibility": "illegible",
                  "class": "handwritten", "language": "na", "area": 360.0},
            "9": {"id": 9, "image_id": 42, "bbox": [50, 40, 30, 12], "utf8_string": "cafe\n",
                  "legibility": "legible", "class": "others", "language": "not english"},
        },
    }  # fmt: skip
    counts: Counter[str] = Counter()
    texts = load_coco_text(_write(tmp_path / "COCO_Text.json", data), counts)
    assert [(t.text, t.legible, t.bbox) for t in texts["42"]] == [
        ("STOP", True, [10.5, 20.0, 30.0, 12.0]),
        ("", False, [50.0, 20.0, 30.0, 12.0]),
        ("cafe", True, [50.0, 40.0, 30.0, 12.0]),
    ]
    assert counts["ocr_illegible"] == 1


def test_coco_text_bad_legibility_and_unknown_shape_are_fatal(tmp_path: Path) -> None:
    bad = {"anns": {"3": {"image_id": 1, "bbox": [1, 1, 2, 2], "legibility": "maybe"}}}
    with pytest.raises(InputFileError, match=r"record anns\['3'\]: 'legibility'"):
        load_coco_text(_write(tmp_path / "a.json", bad), Counter())
    with pytest.raises(InputFileError, match="not a COCO-Text file"):
        load_coco_text(_write(tmp_path / "b.json", {"images": []}), Counter())


# -- attributes ------------------------------------------------------------------------------
@pytest.fixture
def small_coco(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (100, 100)).save(images / "1.jpg")
    captions = _captions_listing(tmp_path / "captions.json", [1], "{}.jpg")
    instances = _write(
        tmp_path / "instances.json",
        {
            "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100}],
            "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}],
            "annotations": [
                {"id": 500, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 40]},
                {"id": 501, "image_id": 1, "category_id": 3, "bbox": [50, 50, 40, 40]},
            ],
        },
    )
    return {"images_dir": images, "captions": captions, "instances": instances}


def _objects_attributes(small_coco: dict[str, Path], attributes: Path) -> tuple[dict, dict]:
    result = CocoCollector(**small_coco, attributes=attributes).collect()
    objects = {o.annotation_id: o.attributes for o in result.records[0].objects}
    return objects, result.summary


def test_cocottributes_layout_uses_vector_order_sorted_by_attribute_id(small_coco, tmp_path):
    # Listed out of id order on purpose: position i of a vector is the i-th attribute BY ID.
    data = {
        "attributes": [
            {"id": 30, "name": "rusty"},
            {"id": 10, "name": "red"},
            {"id": 20, "name": "shiny"},
        ],
        "ann_vecs": {"p1": [0.9, 0.1, 0.6], "p2": [0.0, 0.5, 1.0], "p3": [1, 1, 1]},
        "patch_id_to_ann_id": {"p1": 500, "p2": 501, "p3": 9999},
        "split": {"p1": "train2014", "p2": "val2014", "p3": "train2014"},
    }
    objects, summary = _objects_attributes(small_coco, _write(tmp_path / "attrs.json", data))
    assert objects == {500: ["red", "rusty"], 501: ["rusty"]}
    assert summary["attributes"] == 3 and summary["attributes_for_unknown_annotations"] == 1
    # the captions listing has no sizes and the instances listing has them: that is no conflict
    assert summary["images_conflicting_entries"] == 0 and summary["records_with_problems"] == 0


def test_cocottributes_by_annotation_layout(small_coco, tmp_path: Path) -> None:
    data = {
        "attributes": [{"id": 1, "name": "metal"}, {"id": 2, "name": "wet"}],
        "ann_attrs": {"501": {"attrs_vector": [0.0, 0.75], "split": "train2014"}},
    }
    objects, _ = _objects_attributes(small_coco, _write(tmp_path / "attrs.json", data))
    assert objects == {500: [], 501: ["wet"]}


def test_cocottributes_wrong_vector_length_is_fatal(small_coco, tmp_path: Path) -> None:
    data = {
        "attributes": [{"id": 1, "name": "metal"}, {"id": 2, "name": "wet"}],
        "ann_vecs": {"7": [1.0]},
        "patch_id_to_ann_id": {"7": 500},
    }
    with pytest.raises(InputFileError, match=r"ann_vecs\['7'\].*should hold 2 numbers"):
        load_attributes(_write(tmp_path / "attrs.json", data))


def test_visual_genome_regions_attach_by_overlap(small_coco, tmp_path: Path) -> None:
    data = [
        {
            "image_id": 2417890,
            "coco_id": 1,
            "attributes": [
                {"x": 2, "y": 1, "w": 38, "h": 40, "names": ["car"], "attributes": ["Blue"]},
                {"x": 52, "y": 55, "w": 35, "h": 35, "names": ["car"], "attributes": ["old"]},
                {"x": 45, "y": 0, "w": 10, "h": 10, "names": ["sign"], "attributes": ["tiny"]},
            ],
        },
        {"image_id": 3, "attributes": [{"x": 0, "y": 0, "w": 5, "h": 5, "attributes": ["x"]}]},
    ]
    objects, summary = _objects_attributes(small_coco, _write(tmp_path / "vg.json", data))
    assert objects == {500: ["blue"], 501: ["old"]}
    assert summary["attributes_unmatched_regions"] == 1
    assert summary["attributes_for_unlisted_images"] == 1


def test_box_iou() -> None:
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0


def test_pickled_attributes_are_refused_without_being_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"ann_vecs": {}, "touch": str(marker)})
    for name in ("cocottributes_eccv_version.pkl", "disguised.json"):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(InputFileError) as caught:
            load_attributes(path)
        assert "is a pickle" in str(caught.value) and name in str(caught.value)
    assert not marker.exists()


def test_unknown_attributes_layout_lists_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="expected COCO Attributes"):
        load_attributes(_write(tmp_path / "a.json", {"objects": []}))
