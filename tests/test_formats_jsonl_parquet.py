"""vlit's own JSONL and Parquet: lossless, streaming, and Parquet that `datasets` opens for real."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlit.errors import InputFileError
from vlit.formats import ImportContext
from vlit.formats.jsonl import JsonlReader, JsonlWriter
from vlit.formats.parquet import ParquetReader, ParquetWriter
from vlit.reasons import IMAGE_UNREADABLE, Reason
from vlit.schema import Sample, Turn

PHOTOS = ["000000005802.jpg", "000000012448.jpg"]


@pytest.fixture()
def samples(coco_tiny: Path) -> list[Sample]:
    root = str(coco_tiny / "train2017")
    return [
        Sample(
            sample_id="s1",
            image=PHOTOS[0],
            image_id="5802",
            image_root=root,
            mode="conversation",
            turns=[Turn("user", "What is served?"), Turn("assistant", "Broccoli and rice. ✓")],
            provenance={"model": "smollm2", "rollout": 3, "examples": ["e1", "e7"]},
            scores={"matching": 0.31, "correctness": 1.0},
            labels=["food", "counting"],
            extra={"source_format": "llava", "image_token": {"turn": 0, "placement": "before"}},
        ),
        Sample(
            sample_id="s2",
            image=PHOTOS[1],
            image_root=root,
            turns=[Turn("user", "Where?"), Turn("assistant", "A street.")],
            drop_reason=Reason("matching_below_min", "0.2"),
        ),
        Sample(
            sample_id="s3",
            image="gone.jpg",
            image_root=root,
            turns=[Turn("user", "?")],
            failure_reason=Reason(IMAGE_UNREADABLE, "gone.jpg is empty"),
        ),
        Sample(sample_id="s4", turns=[Turn("user", "Text only"), Turn("assistant", "Yes")]),
    ]


def test_jsonl_round_trip_is_lossless(samples: list[Sample], tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    counts = JsonlWriter().write(samples, first)
    assert counts.samples == 4 and len(first.read_text().splitlines()) == 4
    root = Path(samples[0].image_root)  # the image root comes from the user, not the lines
    read = list(JsonlReader().read(first, ImportContext(images=root, workdir=tmp_path)))
    assert read == samples
    second = tmp_path / "b.jsonl"
    JsonlWriter().write(read, second)
    assert second.read_bytes() == first.read_bytes()
    assert "✓" in first.read_text(encoding="utf-8")  # UTF-8, readable


def test_jsonl_bad_lines_become_failed_samples(samples: list[Sample], tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    JsonlWriter().write(samples[:2], path)
    lines = path.read_text().splitlines()
    broken = [lines[0], '{"sample_id": "x", "turns": "not a list"}', lines[1][:40], lines[1]]
    path.write_text("\n".join(broken) + "\n", encoding="utf-8")
    root = Path(samples[0].image_root)
    read = list(JsonlReader().read(path, ImportContext(images=root, workdir=tmp_path)))
    assert [sample.ok for sample in read] == [True, False, False, True]
    assert "`turns` is a string" in str(read[1].failure_reason)
    assert "line 3: not valid JSON" in str(read[2].failure_reason)
    assert read[3] == samples[1]


def test_parquet_opens_in_datasets_with_an_image_feature(
    samples: list[Sample], coco_tiny: Path, tmp_path: Path
) -> None:
    path = tmp_path / "samples.parquet"
    counts = ParquetWriter().write(samples, path)
    assert (counts.samples, counts.images_embedded, counts.images_missing) == (4, 2, 1)

    dataset = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert dataset.features["image"] == datasets.Image()
    assert dataset.num_rows == 4
    row = dataset[0]
    assert isinstance(row["image"], Image.Image)
    source = Image.open(coco_tiny / "train2017" / PHOTOS[0]).convert("RGB")
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(source))
    assert row["turns"][1] == {"role": "assistant", "text": "Broccoli and rice. ✓"}
    assert {item["name"]: item["value"] for item in row["scores"]} == samples[0].scores
    assert dataset[3]["image"] is None
    # the missing image keeps its reference, without bytes
    raw = pq.read_table(path).column("image").to_pylist()
    assert raw[2] == {"bytes": None, "path": "gone.jpg"}


def test_parquet_round_trip_unpacks_images(samples: list[Sample], tmp_path: Path) -> None:
    path = tmp_path / "samples.parquet"
    ParquetWriter(rows_per_group=3).write(samples, path)
    assert pq.ParquetFile(path).num_row_groups == 2
    workdir = tmp_path / "unpacked"
    reader = ParquetReader(batch_size=2)
    root = Path(samples[0].image_root)  # for images not embedded; never a row's own root
    read = list(reader.read(path, ImportContext(images=root, workdir=workdir)))
    assert reader.counts["images_unpacked"] == 2
    for original, again in zip(samples, read, strict=True):
        if original.image is not None and original.image_path.is_file():  # type: ignore[union-attr]
            assert again.image_root == str(workdir.resolve())
            assert again.image_path.read_bytes() == original.image_path.read_bytes()  # type: ignore[union-attr]
            again.image_root = original.image_root
        assert again == original
    second = tmp_path / "again.parquet"
    ParquetWriter(rows_per_group=3).write(read, second)
    first_table = pq.read_table(path).drop_columns(["image_root"])
    assert pq.read_table(second).drop_columns(["image_root"]).equals(first_table)


def test_parquet_that_is_not_ours_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"question": ["?"]}), path)
    with pytest.raises(InputFileError, match="not a vlit samples Parquet"):
        list(ParquetReader().read(path, ImportContext(images=None, workdir=tmp_path)))
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(InputFileError, match="not a readable Parquet file"):
        list(
            ParquetReader().read(
                tmp_path / "junk.parquet", ImportContext(images=None, workdir=tmp_path)
            )
        )
