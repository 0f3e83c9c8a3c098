"""The demo set: bundled scikit-image photos plus our own COCO-format annotations."""

from __future__ import annotations

import hashlib
import json
import socket
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlit.clue import region_clue, visual_clue
from vlit.collect import CocoCollector
from vlit.demo_data import DEMO_FILES, DemoPaths, demo_annotation_dir, materialize_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    """Materialised with every socket connection refused: the photos must not be downloaded."""
    original = socket.socket.connect

    def refuse(*_args: object) -> None:
        raise OSError("network is off in this test")

    socket.socket.connect = refuse  # type: ignore[method-assign,assignment]
    try:
        return materialize_demo(tmp_path_factory.mktemp("demo"))
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_photos_are_written_as_jpeg_matching_the_listing(demo: DemoPaths) -> None:
    listing = _load(demo.instances)["images"]
    assert listing == _load(demo.captions)["images"]
    assert len(listing) >= 6
    for image in listing:
        with Image.open(demo.images_dir / image["file_name"]) as photo:
            assert photo.format == "JPEG" and photo.mode == "RGB"
            assert photo.size == (image["width"], image["height"])


def test_annotations_are_complete_and_inside_the_images(demo: DemoPaths) -> None:
    images = {i["id"]: i for i in _load(demo.instances)["images"]}
    captions = Counter(a["image_id"] for a in _load(demo.captions)["annotations"])
    assert all(captions[i] >= 3 for i in images)
    instances = _load(demo.instances)
    categories = {c["id"]: c for c in instances["categories"]}
    for annotation in instances["annotations"]:
        x, y, w, h = annotation["bbox"]
        image = images[annotation["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert annotation["category_id"] in categories
    vqa = _load(demo.vqa_annotations)["annotations"]
    assert all(len(entry["answers"]) == 10 for entry in vqa)
    assert {e["question_id"] for e in vqa} == {
        q["question_id"] for q in _load(demo.vqa_questions)["questions"]
    }


def test_package_annotation_files_are_small() -> None:
    sizes = {name: (demo_annotation_dir() / name).stat().st_size for name in DEMO_FILES.values()}
    assert all(size < 32_000 for size in sizes.values()), sizes
    assert not list(demo_annotation_dir().glob("*.jpg"))  # photos are made, never committed


def test_materialize_is_repeatable(demo: DemoPaths, tmp_path: Path) -> None:
    again = materialize_demo(tmp_path / "again")

    def digest(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}

    assert digest(again.images_dir) == digest(demo.images_dir)
    assert digest(again.captions.parent) == digest(demo.captions.parent)


def test_collect_reads_the_demo_like_a_real_dataset(demo: DemoPaths) -> None:
    result = CocoCollector(
        images_dir=demo.images_dir,
        captions=demo.captions,
        instances=demo.instances,
        vqa_questions=demo.vqa_questions,
        vqa_annotations=demo.vqa_annotations,
        coco_text=demo.coco_text,
        attributes=demo.attributes,
    ).collect()
    summary = result.summary
    text_anns = _load(demo.coco_text)["anns"].values()
    assert summary["images"] == len(_load(demo.captions)["images"])
    assert summary["captions"] == len(_load(demo.captions)["annotations"])
    assert summary["objects"] == len(_load(demo.instances)["annotations"])
    assert summary["vqa"] == len(_load(demo.vqa_questions)["questions"])
    assert summary["ocr"] == len(text_anns)
    assert summary["ocr_illegible"] == sum(a["legibility"] == "illegible" for a in text_anns)
    assert summary["attributes"] == sum(
        len(set(a["attributes"])) for a in _load(demo.attributes)["annotations"]
    )
    assert summary["records_with_problems"] == 0
    assert summary["images_without_objects"] == 1  # the printed page

    by_name = {r.file_name: r for r in result.records}
    page = by_name["page.jpg"]
    assert page.vqa[0].majority_answer == "region-based segmentation"  # computed: no given one
    assert '"Region-based segmentation"' in visual_clue(page)
    motorcycle = by_name["motorcycle.jpg"]
    assert '"YAMAHA"' in visual_clue(motorcycle)
    bench = next(i for i, o in enumerate(motorcycle.objects) if o.category == "bench")
    assert "middle left" in region_clue(motorcycle, bench)
