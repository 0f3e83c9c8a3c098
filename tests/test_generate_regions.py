"""Region mode on real COCO images: which boxes are chosen, and the drawn copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlit.collect import CocoCollector
from vlit.errors import RecordError
from vlit.generate.regions import (
    BOX_COLOURS,
    RegionRule,
    box_line_width,
    choose_regions,
    draw_region_box,
    eligible_objects,
    region_image_name,
)
from vlit.schema import ImageRecord


@pytest.fixture(scope="module")
def records(coco_tiny: Path) -> dict[str, ImageRecord]:
    result = CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
        instances=coco_tiny / "annotations" / "instances_train2017.json",
    ).collect()
    return {record.image_id: record for record in result.records}


def test_crowd_and_tiny_boxes_are_never_chosen(records: dict[str, ImageRecord]) -> None:
    rule = RegionRule(min_area_fraction=0.01, per_image=3)
    record = records["223648"]  # 38 objects, two of them crowd regions
    eligible = eligible_objects(record, rule)
    image_area = (record.width or 0) * (record.height or 0)
    assert 0 < len(eligible) < len(record.objects)
    for index, obj in enumerate(record.objects):
        assert obj.bbox is not None
        big = obj.bbox[2] * obj.bbox[3] >= 0.01 * image_area and min(obj.bbox[2:]) >= 16
        assert (index in eligible) == (big and not obj.iscrowd)
    for seed in range(20):
        chosen = choose_regions(record, rule=rule, seed=seed)
        assert len(chosen) == 3 and set(chosen) <= set(eligible)
    assert choose_regions(records["262284"], rule=rule, seed=0) == []  # no objects at all


def test_choice_is_seeded(records: dict[str, ImageRecord]) -> None:
    rule = RegionRule(per_image=1)
    record = records["184613"]
    picks = {tuple(choose_regions(record, rule=rule, seed=seed)) for seed in range(40)}
    assert choose_regions(record, rule=rule, seed=5) == choose_regions(record, rule=rule, seed=5)
    assert len(picks) > 3


def test_drawn_box_surrounds_the_object_and_leaves_it_uncovered(
    records: dict[str, ImageRecord], tmp_path: Path
) -> None:
    record = records["391895"]
    bbox = record.objects[0].bbox
    assert bbox is not None
    target = tmp_path / region_image_name(record.image_id, 0)
    colour_name = draw_region_box(record.path, bbox, target)
    assert target.name == "391895-obj0.jpg" and target.parent.name == "regions"
    colour = np.array(dict(BOX_COLOURS)[colour_name], dtype=float)
    original = np.asarray(Image.open(record.path).convert("RGB"), dtype=float)
    drawn = np.asarray(Image.open(target).convert("RGB"), dtype=float)
    assert drawn.shape == original.shape
    line = box_line_width(record.width or 0, record.height or 0)
    assert line == 4  # 640 x 360
    x, y, w, h = (round(v) for v in bbox)
    # The band just left of the box is the box colour (JPEG: approximately).
    left_band = drawn[y + 5 : y + h - 5, x - line + 1 : x - 1]
    assert np.abs(left_band - colour).mean() < 40
    assert np.abs(original[y + 5 : y + h - 5, x - line + 1 : x - 1] - colour).mean() > 60
    # Inside the box the picture is unchanged (up to JPEG noise).
    inside = (slice(y + 4, y + h - 4), slice(x + 4, x + w - 4))
    assert np.abs(drawn[inside] - original[inside]).mean() < 6
    # The chosen colour is the palette's most distant from the pixels under the line.
    under = original[y + 5 : y + h - 5, x - line : x].reshape(-1, 3).mean(axis=0)
    distances = {name: np.sum((np.array(rgb) - under) ** 2) for name, rgb in BOX_COLOURS}
    assert colour_name == max(distances, key=lambda name: distances[name])


def test_line_width_grows_with_the_image() -> None:
    assert box_line_width(320, 200) == 2
    assert box_line_width(640, 480) == 4
    assert box_line_width(2048, 1536) == 12


def test_existing_copy_is_kept_and_missing_image_is_a_record_error(
    records: dict[str, ImageRecord], tmp_path: Path
) -> None:
    record = records["391895"]
    bbox = record.objects[0].bbox
    assert bbox is not None
    target = tmp_path / "copy.jpg"
    draw_region_box(record.path, bbox, target)
    first = target.read_bytes()
    draw_region_box(record.path, bbox, target)
    assert target.read_bytes() == first
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(RecordError):
        draw_region_box(tmp_path / "no-such.jpg", bbox, tmp_path / "other.jpg")
