"""MIMIC-IT / Otter: instructions JSON + images Parquet, exported and imported with real images."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlit.formats import ImportContext
from vlit.formats.mimicit import MimicItReader, MimicItWriter, images_path_for
from vlit.schema import Sample, Turn

PHOTOS = ["000000005802.jpg", "000000012448.jpg", "000000051191.jpg"]


@pytest.fixture()
def coco_samples(coco_tiny: Path) -> list[Sample]:
    root = str(coco_tiny / "train2017")
    return [
        Sample(
            sample_id="COCO_INS_0001",
            image=PHOTOS[0],
            image_id="COCO_IMG_5802",
            image_root=root,
            turns=[
                Turn("user", "What food is on the table?"),
                Turn("assistant", "Plates of food."),
                Turn("user", "Is anyone eating?"),
                Turn("assistant", "It does not look like it."),
            ],
        ),
        Sample(
            sample_id="COCO_INS_0002",
            image=PHOTOS[1],
            image_id="COCO_IMG_12448",
            image_root=root,
            turns=[Turn("user", "Describe the scene."), Turn("assistant", "A street.")],
        ),
        Sample(
            sample_id="COCO_INS_0003",
            image=PHOTOS[2],
            image_id="COCO_IMG_51191",
            image_root=root,
            turns=[Turn("user", "What animal?"), Turn("assistant", "A dog.")],
        ),
        Sample(sample_id="odd", turns=[Turn("user", "Only a question")]),
    ]


def test_export_then_import_with_real_images(
    coco_samples: list[Sample], coco_tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "COCO_instructions.json"
    counts = MimicItWriter().write(coco_samples, out)
    images_file = tmp_path / "COCO_images.parquet"
    assert counts.files == [str(out), str(images_file)]
    assert (counts.samples, counts.skipped_unconvertible, counts.images_embedded) == (3, 1, 3)

    document = json.loads(out.read_text())
    first, second = document["data"]["COCO_INS_0001"], document["data"]["COCO_INS_0001_1"]
    assert first["rel_ins_ids"] == ["COCO_INS_0001_1"] and second["image_ids"] == ["COCO_IMG_5802"]
    assert second["instruction"] == "Is anyone eating?"

    # pandas reads the images as Otter does: index = image id, column base64 of the JPEG file
    frame = pd.read_parquet(images_file)
    assert list(frame.columns) == ["base64"]
    assert sorted(frame.index) == ["COCO_IMG_12448", "COCO_IMG_51191", "COCO_IMG_5802"]
    stored = base64.b64decode(frame.loc["COCO_IMG_5802", "base64"])
    assert stored == (coco_tiny / "train2017" / PHOTOS[0]).read_bytes()

    context = ImportContext(images=None, workdir=tmp_path / "unpacked")  # default images file
    reader = MimicItReader()
    samples = list(reader.read(out, context))
    assert [sample.sample_id for sample in samples] == [s.sample_id for s in coco_samples[:3]]
    for original, read in zip(coco_samples, samples, strict=False):
        assert read.turns == original.turns
        assert read.image_id == original.image_id
        assert read.image_path is not None
        assert read.image_path.read_bytes() == original.image_path.read_bytes()  # type: ignore[union-attr]
        pixels = np.asarray(Image.open(read.image_path).convert("RGB"))
        source = np.asarray(Image.open(original.image_path).convert("RGB"))  # type: ignore[arg-type]
        assert np.array_equal(pixels, source)


def test_write_read_write_is_stable(coco_samples: list[Sample], tmp_path: Path) -> None:
    first = tmp_path / "a_instructions.json"
    MimicItWriter().write(coco_samples, first)
    samples = list(MimicItReader().read(first, ImportContext(images=None, workdir=tmp_path / "w")))
    second = tmp_path / "b_instructions.json"
    MimicItWriter().write(samples, second)
    assert second.read_bytes() == first.read_bytes()
    assert pq.read_table(tmp_path / "b_images.parquet").equals(
        pq.read_table(tmp_path / "a_images.parquet")
    )


def _spec_like_file(tmp_path: Path, coco_tiny: Path) -> tuple[Path, Path]:
    """An instructions file shaped like the format description, with real images."""
    data = {
        "D3_INS_000000": {"instruction": "What is the prompt?", "answer": "A plate.",
                          "image_ids": ["D3_IMG_000000"], "rel_ins_ids": ["D3_INS_000002"]},
        "D3_INS_000001": {"instruction": "Infer the prompt.", "answer": "A street.",
                          "image_ids": ["D3_IMG_000001"], "rel_ins_ids": ["D3_INS_000000"]},
        "D3_INS_000002": {"instruction": "And the colours?", "answer": "Mostly white.",
                          "image_ids": ["D3_IMG_000000"], "rel_ins_ids": ["D3_INS_000000"],
                          "source": "hand-made"},
        "D3_INS_000003": {"instruction": 5, "answer": "bad", "image_ids": [], "rel_ins_ids": []},
        "D3_INS_000004": {"answer": "No image.", "instruction": "Text only?",
                          "image_ids": [], "rel_ins_ids": []},
    }  # fmt: skip
    document = {"meta": {"version": "0.0.1", "time": "2023-10-29", "author": "test"}, "data": data}
    instructions = tmp_path / "D3_instructions.json"
    instructions.write_text(json.dumps(document, indent=4), encoding="utf-8")
    encoded = {
        "D3_IMG_000000": base64.b64encode((coco_tiny / "train2017" / PHOTOS[0]).read_bytes()),
        "D3_IMG_000001": base64.b64encode((coco_tiny / "train2017" / PHOTOS[1]).read_bytes()),
    }
    frame = pd.DataFrame.from_dict(
        {key: value.decode() for key, value in encoded.items()}, orient="index", columns=["base64"]
    )
    images = tmp_path / "D3_images.parquet"
    frame.to_parquet(images, engine="pyarrow")
    return instructions, images


def test_related_instructions_on_the_same_image_become_one_conversation(
    tmp_path: Path, coco_tiny: Path
) -> None:
    instructions, images = _spec_like_file(tmp_path, coco_tiny)
    reader = MimicItReader()
    samples = list(reader.read(instructions, ImportContext(images=images, workdir=tmp_path / "w")))
    by_id = {sample.sample_id: sample for sample in samples}
    assert list(by_id) == ["D3_INS_000000", "D3_INS_000001", "D3_INS_000003", "D3_INS_000004"]
    joined = by_id["D3_INS_000000"]
    assert [turn.text for turn in joined.turns] == [
        "What is the prompt?",
        "A plate.",
        "And the colours?",
        "Mostly white.",
    ]
    # D3_INS_000001 points at 000000 but shows another image: its own conversation
    assert len(by_id["D3_INS_000001"].turns) == 2
    assert (
        by_id["D3_INS_000001"].image_path.read_bytes()
        == (  # type: ignore[union-attr]
            coco_tiny / "train2017" / PHOTOS[1]
        ).read_bytes()
    )
    assert "`instruction` is a number" in str(by_id["D3_INS_000003"].failure_reason)
    assert by_id["D3_INS_000004"].image is None

    # and the whole file comes back as the same JSON (every field, every link)
    out = tmp_path / "again_instructions.json"
    MimicItWriter().write(samples, out)
    assert json.loads(out.read_text()) == json.loads(instructions.read_text())


def test_images_missing_or_not_base64_are_counted(tmp_path: Path, coco_tiny: Path) -> None:
    instructions, _ = _spec_like_file(tmp_path, coco_tiny)
    frame = pd.DataFrame.from_dict({"D3_IMG_000000": "%%% not base64 %%%"}, orient="index")
    frame.columns = ["base64"]
    broken = tmp_path / "broken.parquet"
    frame.to_parquet(broken)
    reader = MimicItReader()
    samples = list(reader.read(instructions, ImportContext(images=broken, workdir=tmp_path / "w")))
    assert reader.counts["images_not_base64"] == 1
    assert reader.counts["images_not_in_images_file"] == 2
    assert all(not s.image_path.exists() for s in samples if s.image_path)  # type: ignore[union-attr]


def test_images_path_naming() -> None:
    assert images_path_for(Path("x/LA_instructions.json")) == Path("x/LA_images.parquet")
    assert images_path_for(Path("x/mine.json")) == Path("x/mine_images.parquet")
