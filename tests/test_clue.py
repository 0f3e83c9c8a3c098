"""The visual clue: counts per kind, positions, sizes and determinism, on built and real records."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from vlit.clue import (
    count_objects,
    describe_position,
    describe_size,
    object_key,
    region_clue,
    visual_clue,
)
from vlit.collect import CocoCollector
from vlit.errors import RecordError
from vlit.schema import ImageRecord, ObjectAnnotation, OcrText, VqaPair


def _kitchen() -> ImageRecord:
    return ImageRecord(
        image_id="k1",
        file_name="k1.jpg",
        width=400,
        height=300,
        captions=["two bottles on a dining table  ", "A kitchen with people."],
        objects=[
            ObjectAnnotation("bottle", "kitchen", [10, 10, 20, 60], attributes=["green", "glass"]),
            ObjectAnnotation("dining table", "furniture", [0, 150, 400, 150]),
            ObjectAnnotation("person", "person", [300, 40, 60, 200]),
            ObjectAnnotation("bottle", "kitchen", [50, 10, 20, 60]),
            ObjectAnnotation("person", "person", [0, 0, 400, 100], iscrowd=True),
            ObjectAnnotation("person", "person", [200, 40, 60, 200]),
        ],
        ocr=[OcrText("BARDOLINO", [12, 30, 16, 6]), OcrText("smudge", None, legible=False)],
        vqa=[
            VqaPair("How many bottles are on the table", ["2", "2", "two"], "2"),
            VqaPair("Is anyone cooking?", ["no", "yes", "no"], ""),
        ],
    )


def test_whole_image_clue_sections_in_order() -> None:
    clue = visual_clue(_kitchen())
    lines = clue.splitlines()
    assert lines[0] == (
        "People describe this picture as follows: Two bottles on a dining table. "
        "A kitchen with people."
    )
    assert lines[1] == (
        "Visible objects, counted by kind: 2 person_person and a group of person_person, "
        "2 kitchen_bottle, 1 furniture_dining table."
    )
    assert "Q: How many bottles are on the table? A: 2." in lines[2]
    assert "Q: Is anyone cooking? A: no." in lines[2]  # no majority given: the first answer
    assert lines[3] == 'Written text that can be read in the picture: "BARDOLINO".'
    assert "smudge" not in clue  # illegible text stays out
    assert lines[4] == "Details of single objects: the bottle (top left): green, glass."


def test_clue_does_not_depend_on_object_order() -> None:
    record = _kitchen()
    expected = visual_clue(record).splitlines()[1]
    for seed in range(5):
        random.Random(seed).shuffle(record.objects)
        assert visual_clue(record).splitlines()[1] == expected


def test_count_objects_separates_crowds() -> None:
    counts = count_objects(_kitchen().objects)
    assert counts == [
        ("person_person", 2, 1),
        ("kitchen_bottle", 2, 0),
        ("furniture_dining table", 1, 0),
    ]
    assert object_key(ObjectAnnotation("thing")) == "thing"
    crowds = [ObjectAnnotation("person", "person", iscrowd=True)] * 2
    assert "2 groups of person_person" in visual_clue(
        ImageRecord(image_id="c", file_name="c.jpg", objects=crowds)
    )


def test_empty_record_says_so() -> None:
    clue = visual_clue(ImageRecord(image_id="e", file_name="e.jpg"))
    assert clue == "Nothing has been annotated for this picture."


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([0, 0, 100, 75], "top left"),  # inside the top-left quarter of 400x300
        ([20, 10, 60, 40], "top left"),
        ([300, 0, 100, 75], "top right"),
        ([0, 225, 100, 75], "bottom left"),
        ([300, 225, 100, 75], "bottom right"),
        ([150, 0, 100, 50], "top centre"),
        ([0, 120, 50, 60], "middle left"),
        ([150, 100, 100, 100], "centre"),
        ([0, 0, 400, 300], "centre"),
    ],
)
def test_describe_position(bbox: list[float], expected: str) -> None:
    assert describe_position(bbox, 400, 300) == expected


def test_describe_size_thresholds() -> None:
    assert describe_size([0, 0, 40, 30], 400, 300) == ("small", pytest.approx(0.01))
    assert describe_size([0, 0, 200, 150], 400, 300) == ("large", pytest.approx(0.25))
    label, share = describe_size([0, 0, 100, 100], 400, 300)
    assert label == "medium" and share == pytest.approx(1 / 12)
    with pytest.raises(ValueError):
        describe_size([0, 0, 1, 1], 0, 300)


def test_region_clue_states_kind_place_and_size() -> None:
    record = _kitchen()
    clue = region_clue(record, 0)
    lines = clue.splitlines()
    assert lines[0] == "The object in the box is a bottle (kitchen)."
    assert lines[1] == "It can be described as green and glass."
    assert "in the top left of the picture" in lines[2]
    assert "about 1% of its area" in lines[2] and "looks small" in lines[2]
    assert "from (0.03, 0.03) to (0.07, 0.23)" in lines[3]
    assert "1 more kitchen_bottle" in lines[4]
    assert clue.endswith(visual_clue(record))

    crowd = region_clue(record, 4)
    assert crowd.startswith("The box holds a group of person")
    assert "top centre" in crowd and "about 33% of its area" in crowd and "looks large" in crowd

    table = region_clue(record, 1)
    assert "bottom centre" in table and "50%" in table


def test_region_clue_without_box_or_size() -> None:
    record = ImageRecord(image_id="n", file_name="n.jpg", objects=[ObjectAnnotation("apple")])
    clue = region_clue(record, 0)
    assert clue.startswith("The object in the box is an apple.")
    assert "is not known" in clue


def test_region_clue_index_out_of_range_names_the_range() -> None:
    with pytest.raises(RecordError, match="from 0 to 5"):
        region_clue(_kitchen(), 6)
    with pytest.raises(RecordError, match="from 0 to 5"):
        region_clue(_kitchen(), -1)
    with pytest.raises(RecordError, match="has no objects"):
        region_clue(ImageRecord(image_id="e", file_name="e.jpg"), 0)


_COUNT = re.compile(r"(\d+) (\S+?_[^,]+?)(?= and|,|\.$)")


def test_counts_in_real_coco_clues_match_the_annotations(coco_tiny: Path) -> None:
    result = CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
        instances=coco_tiny / "annotations" / "instances_train2017.json",
        check_images=False,
    ).collect()
    checked = 0
    for record in result.records:
        clue = visual_clue(record)
        object_lines = [line for line in clue.splitlines() if line.startswith("Visible objects")]
        singles = Counter(
            f"{o.supercategory}_{o.category}" for o in record.objects if not o.iscrowd
        )
        groups = Counter(f"{o.supercategory}_{o.category}" for o in record.objects if o.iscrowd)
        if not record.objects:
            assert object_lines == []
            continue
        line = object_lines[0]
        parsed = {key: int(number) for number, key in _COUNT.findall(line)}
        assert parsed == dict(singles), (record.image_id, line)
        for key, number in groups.items():
            assert ("a group of " + key if number == 1 else f"{number} groups of {key}") in line
        # every caption is there (first letter capitalised, a full stop added where missing)
        assert all(caption[1:].rstrip(".") in clue for caption in record.captions)
        checked += 1
    assert checked == 49
