"""Own-images JSONL: good lines become records, bad lines are skipped and counted by line number."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlit.collect import JSONL_COUNTERS, JsonlCollector
from vlit.collect._io import escapes_root
from vlit.errors import InputFileError


@pytest.fixture
def photos(tmp_path: Path, coco_tiny: Path) -> Path:
    """Two real COCO photos in a nested folder, as a user's own image tree."""
    root = tmp_path / "photos"
    (root / "street").mkdir(parents=True)
    for name in ("000000391895.jpg", "000000522418.jpg"):
        shutil.copy(coco_tiny / "train2017" / name, root / "street" / name)
    return root


def _lines(tmp_path: Path, lines: list[str | dict]) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


GOOD = {
    "image_id": "moped-1",
    "file_name": "street/000000391895.jpg",
    "captions": ["A man on a moped.  ", "A dirt road\nin the hills."],
    "objects": [
        {"category": "motorcycle", "supercategory": "vehicle", "bbox": [359, 146, 112, 213],
         "attributes": ["red"]},
        {"category": "person", "supercategory": "person", "bbox": [0, 0, 640, 100],
         "iscrowd": True},
    ],
    "ocr": [{"text": "KAWASAKI", "bbox": [1, 2, 3, 4]}, {"text": "??", "legible": False}],
    "vqa": [{"question": "What is he riding?", "answers": ["moped", "motorbike", "moped"]},
            {"question": "Is it sunny?", "majority_answer": "yes"}],
}  # fmt: skip


def test_good_and_bad_lines(tmp_path: Path, photos: Path) -> None:
    lines: list[str | dict] = [
        GOOD,  # line 1
        {"image_id": 7, "file_name": "street/000000522418.jpg", "width": 640, "height": 480},
        "{not json",  # line 3
        "",  # blank lines are not records
        {"image_id": "x", "file_name": "street/000000522418.jpg", "captions": "one string"},
        {"image_id": "esc", "file_name": "../../etc/passwd"},  # line 6
        {"image_id": "abs", "file_name": "/etc/passwd"},  # line 7
        {"image_id": "moped-1", "file_name": "street/000000522418.jpg"},  # line 8: duplicate
        {"image_id": "gone", "file_name": "street/missing.jpg", "caption": ["typo field"]},
        {"image_id": ["list"], "file_name": "a.jpg"},  # line 10
        {"image_id": "v", "file_name": "a.jpg", "vqa": [{"question": "No answer?"}]},
        [1, 2, 3],  # line 12
        {"image_id": "box", "file_name": "street/000000522418.jpg",
         "objects": [{"category": "cat", "bbox": [1, 2, "3", 4]}]},  # line 13
    ]  # fmt: skip
    result = JsonlCollector(jsonl_file=_lines(tmp_path, lines), images_dir=photos).collect()
    summary = result.summary
    assert set(JSONL_COUNTERS) <= set(summary)
    assert {r.image_id: r.file_name for r in result.records} == {
        "moped-1": "street/000000391895.jpg",
        "7": "street/000000522418.jpg",
        "gone": "street/missing.jpg",
    }
    skipped = {entry["line"]: entry["reason"] for entry in summary["skipped_lines"]}
    assert sorted(skipped) == [3, 5, 6, 7, 8, 10, 11, 12, 13]
    assert "not valid JSON" in skipped[3]
    assert "'captions' should be a list of strings" in skipped[5]
    assert "leaves the image folder" in skipped[6] and "leaves the image folder" in skipped[7]
    assert "already appeared" in skipped[8]
    assert "'image_id' should be" in skipped[10]
    assert "needs 'answers' or 'majority_answer'" in skipped[11]
    assert "expected an object" in skipped[12]
    assert "objects[0]: 'bbox' should be" in skipped[13]
    expected = {
        "lines": 12,
        "images": 3,
        "lines_skipped": 9,
        "lines_invalid_json": 1,
        "lines_wrong_types": 5,
        "images_path_escaping_root": 2,
        "duplicate_image_ids": 1,
        "captions": 2,
        "captions_whitespace_fixed": 2,
        "objects": 2,
        "crowd_annotations": 1,
        "ocr": 2,
        "vqa": 2,
        "attributes": 1,
        "images_missing_file": 1,
        "images_without_objects": 2,
        "images_without_captions": 2,
        "records_with_problems": 1,
    }
    assert {key: summary[key] for key in expected} == expected
    assert summary["unknown_fields"] == {"caption": 1}

    first = result.records[0]
    assert first.captions == ["A man on a moped.", "A dirt road in the hills."]
    with Image.open(first.path) as image:  # no width/height on the line: read from the file
        assert (first.width, first.height) == image.size
    assert first.objects[1].iscrowd and first.objects[0].attributes == ["red"]
    assert [(p.question, p.majority_answer) for p in first.vqa] == [
        ("What is he riding?", "moped"),
        ("Is it sunny?", "yes"),
    ]
    assert [t.legible for t in first.ocr] == [True, False]
    second = result.records[1]
    assert (second.width, second.height) == (640, 480)  # given, and the file is 640x480 too
    assert second.problems == []
    assert result.records[2].problems[0].startswith("missing_file")


def test_size_mismatch_is_noted(tmp_path: Path, photos: Path) -> None:
    path = _lines(tmp_path, [{"image_id": 1, "file_name": "street/000000522418.jpg",
                              "width": 100, "height": 50}])  # fmt: skip
    result = JsonlCollector(jsonl_file=path, images_dir=photos).collect()
    assert result.summary["images_size_mismatch"] == 1
    assert result.records[0].problems == [
        "size_mismatch: annotations say 100x50, the file is 640x480"
    ]


def test_invalid_utf8_line_is_skipped(tmp_path: Path, photos: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_bytes(
        b'{"image_id": 1, "file_name": "\xff\xfe.jpg"}\n'
        + json.dumps({"image_id": 2, "file_name": "street/000000522418.jpg"}).encode()
        + b"\n"
    )
    result = JsonlCollector(jsonl_file=path, images_dir=photos).collect()
    assert [r.image_id for r in result.records] == ["2"]
    assert result.summary["skipped_lines"] == [
        {"line": 1, "reason": "not UTF-8 text (byte 30: invalid start byte)"}
    ]


def test_skipped_lines_list_is_capped_but_counts_are_not(tmp_path: Path, photos: Path) -> None:
    path = _lines(tmp_path, ["{broken"] * 150 + [GOOD])
    summary = JsonlCollector(jsonl_file=path, images_dir=photos).collect().summary
    assert summary["lines_invalid_json"] == 150 and len(summary["skipped_lines"]) == 100


def test_missing_jsonl_file_or_image_folder_is_fatal(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(InputFileError, match="JSONL file not found"):
        JsonlCollector(jsonl_file=tmp_path / "none.jsonl", images_dir=photos).collect()
    path = _lines(tmp_path, [GOOD])
    with pytest.raises(InputFileError, match="image folder does not exist"):
        JsonlCollector(jsonl_file=path, images_dir=tmp_path / "nowhere").collect()


@pytest.mark.parametrize(
    ("name", "escapes"),
    [
        ("a.jpg", False),
        ("street/a.jpg", False),
        ("street/../a.jpg", False),
        ("./a.jpg", False),
        ("..", True),
        ("../a.jpg", True),
        ("street/../../a.jpg", True),
        ("../../etc/passwd", True),
        ("/etc/passwd", True),
        ("C:/Windows/system.ini", True),
        ("..\\..\\secret.txt", True),
        ("", True),
        ("a\x00.jpg", True),
    ],
)
def test_escapes_root(name: str, escapes: bool) -> None:
    assert escapes_root(name) is escapes


def test_an_empty_objects_list_says_none_is_there(tmp_path: Path, photos: Path) -> None:
    path = _lines(tmp_path, [{"image_id": 1, "file_name": "street/000000522418.jpg",
                              "objects": []},
                             {"image_id": 2, "file_name": "street/000000391895.jpg"}])  # fmt: skip
    first, second = JsonlCollector(jsonl_file=path, images_dir=photos).collect().records
    assert first.objects_annotated and not second.objects_annotated
