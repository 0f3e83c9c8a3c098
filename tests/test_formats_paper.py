"""The paper's release format: every accepted conversation shape, round trips, image lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlit.errors import InputFileError
from vlit.formats import ImportContext
from vlit.formats.paper import PaperReader, PaperWriter
from vlit.schema import Sample, Turn

TURNS = [
    Turn("user", "Can you describe the scene?"),
    Turn("assistant", "A bear wades through a river."),
    Turn("user", "Is it looking for food?"),
    Turn("assistant", "Quite possibly; bears fish in rivers."),
]


def _read(path: Path, images: Path | None, tmp_path: Path) -> list[Sample]:
    return list(PaperReader().read(path, ImportContext(images=images, workdir=tmp_path)))


def test_all_conversation_shapes_are_read(tmp_path: Path) -> None:
    # The paper's generator wrote repeated keys; JSON text can hold them, dicts cannot.
    repeated = (
        '{"User": "Can you describe the scene?", "AI": "A bear wades through a river.", '
        '"User": "Is it looking for food?", "AI": "Quite possibly; bears fish in rivers."}'
    )
    objects = [{"User": TURNS[0].text}, {"AI": TURNS[1].text}, {"User": TURNS[2].text},
               {"AI": TURNS[3].text}]  # fmt: skip
    pairs = [["User", TURNS[0].text], ["AI", TURNS[1].text], ["User", TURNS[2].text],
             ["AI", TURNS[3].text]]  # fmt: skip
    exchanges = [{"User": TURNS[0].text, "AI": TURNS[1].text},
                 {"User": TURNS[2].text, "AI": TURNS[3].text}]  # fmt: skip
    text = (
        '{"image_source": "COCO 2014", "construction_time": "2023-11-16", "annotations": ['
        + ", ".join(
            f'{{"img_ids": "288586", "instruction_type": "conversation", "conversations": {c}}}'
            for c in (json.dumps(objects), json.dumps(pairs), json.dumps(exchanges), repeated)
        )
        + "]}"
    )
    source = tmp_path / "paper.json"
    source.write_text(text, encoding="utf-8")
    samples = _read(source, None, tmp_path)
    assert [sample.extra["conversation_style"] for sample in samples] == [
        "objects",
        "pairs",
        "exchanges",
        "repeated_keys",
    ]
    for sample in samples:
        assert sample.turns == TURNS
        assert sample.mode == "conversation" and sample.image_id == "288586"


def test_round_trip_of_our_representation(tmp_path: Path) -> None:
    document = {
        "image_source": "COCO 2014",
        "construction_time": "2023-11-16",
        "annotations": [
            {"img_ids": "5802", "instruction_type": "conversation",
             "conversations": [{"User": "What is this?"}, {"AI": "Food."}]},
            {"img_ids": ["12448", "51191"], "instruction_type": "region",
             "conversations": [["User", "And here?"], ["AI", "A street."]], "note": "two"},
            {"img_ids": 3, "conversations": [{"User": "Bad"}, {"Human": "speaker"}]},
        ],
    }  # fmt: skip
    source = tmp_path / "paper.json"
    source.write_text(json.dumps(document, indent=4, ensure_ascii=False), encoding="utf-8")
    samples = _read(source, None, tmp_path)
    assert samples[1].image_id == "12448" and samples[1].mode == "region"
    assert "speaker 'Human'" in str(samples[2].failure_reason)
    out = tmp_path / "out.json"
    PaperWriter().write(samples, out)
    assert out.read_bytes() == source.read_bytes()


def test_images_are_found_by_id_in_the_image_folder(coco_tiny: Path, tmp_path: Path) -> None:
    document = {
        "image_source": "COCO 2017",
        "construction_time": "",
        "annotations": [
            {"img_ids": "000000005802", "instruction_type": "conversation",
             "conversations": [{"User": "What is it?"}, {"AI": "Food."}]},
            {"img_ids": "424242", "instruction_type": "conversation",
             "conversations": [{"User": "Hm?"}, {"AI": "Hm."}]},
        ],
    }  # fmt: skip
    source = tmp_path / "paper.json"
    source.write_text(json.dumps(document), encoding="utf-8")
    reader = PaperReader()
    samples = list(
        reader.read(source, ImportContext(images=coco_tiny / "train2017", workdir=tmp_path))
    )
    assert samples[0].image == "000000005802.jpg"
    assert samples[0].image_path is not None and samples[0].image_path.is_file()
    assert samples[1].image == "424242.jpg" and reader.counts["images_not_found_by_id"] == 1


def test_vlit_samples_to_paper_and_back(tmp_path: Path) -> None:
    made = [
        Sample(sample_id="g1", image="x.jpg", image_id="288586", mode="negative", turns=TURNS),
        Sample(sample_id="g2", image_id="1", turns=TURNS[:2]),
    ]
    out = tmp_path / "made.json"
    PaperWriter(image_source="COCO 2014", construction_time="2026-01-01").write(made, out)
    document = json.loads(out.read_text())
    assert list(document) == ["image_source", "construction_time", "annotations"]
    assert document["annotations"][0]["conversations"][:2] == [
        {"User": TURNS[0].text},
        {"AI": TURNS[1].text},
    ]
    assert document["annotations"][1]["instruction_type"] == "conversation"
    again = _read(out, None, tmp_path)
    assert [(s.turns, s.image_id, s.mode) for s in again] == [
        (TURNS, "288586", "negative"),
        (TURNS[:2], "1", "conversation"),
    ]


def test_wrong_top_level_is_one_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "list.json"
    source.write_text("[]", encoding="utf-8")
    with pytest.raises(InputFileError) as raised:
        _read(source, None, tmp_path)
    message = str(raised.value)
    assert message.startswith(str(source)) and "top level is a list" in message
    assert "\n" not in message and "Fix:" in message
