"""ShareGPT-style data in both flavours, and telling formats apart (--format auto)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlit.errors import ConfigError, InputFileError
from vlit.formats import FORMAT_NAMES, ImportContext, detect_format
from vlit.formats.llava import LlavaReader
from vlit.formats.sharegpt import ShareGptReader, ShareGptWriter
from vlit.schema import Sample

MESSAGES = [
    {"messages": [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": "<image>What is shown?"},
        {"role": "assistant", "content": "A kitchen."},
        {"role": "user", "content": "Any people?"},
        {"role": "assistant", "content": "No."}],
     "images": ["coco/000000005802.jpg"]},
    {"id": "parts", "messages": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A plate of food."}]}],
     "images": ["p.jpg"]},
    {"messages": [{"role": "user", "content": "Tell me a joke."},
                  {"role": "assistant", "content": "Two pixels walk into a bar."}]},
]  # fmt: skip

CONVERSATIONS = [
    {"conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What colour is it?\n<image>"},
        {"from": "gpt", "value": "Red."}],
     "images": ["red.jpg"], "system": "top-level system is kept as a field"},
    {"id": 7, "conversations": [{"from": "human", "value": "Hello"},
                                {"from": "gpt", "value": "Hi"}]},
]  # fmt: skip


def _read(path: Path, tmp_path: Path) -> list[Sample]:
    return list(ShareGptReader().read(path, ImportContext(images=None, workdir=tmp_path)))


@pytest.mark.parametrize("records", [MESSAGES, CONVERSATIONS], ids=["messages", "conversations"])
def test_round_trip_keeps_every_byte(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    source = tmp_path / "data.json"
    source.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    samples = _read(source, tmp_path)
    assert all(sample.ok for sample in samples)
    out = tmp_path / "out.json"
    ShareGptWriter().write(samples, out)
    assert json.loads(out.read_text()) == records
    assert out.read_bytes() == source.read_bytes()
    # and a second pass changes nothing
    again = tmp_path / "again.json"
    ShareGptWriter().write(_read(out, tmp_path), again)
    assert again.read_bytes() == out.read_bytes()


def test_messages_flavour_is_understood(tmp_path: Path) -> None:
    source = tmp_path / "m.json"
    source.write_text(json.dumps(MESSAGES), encoding="utf-8")
    first, parts, text_only = _read(source, tmp_path)
    assert [turn.role for turn in first.turns] == ["user", "assistant"] * 2
    assert first.turns[0].text == "What is shown?"  # system and token taken out
    assert first.extra["system"] == [{"index": 0, "value": "You look at pictures."}]
    assert first.image == "coco/000000005802.jpg" and first.image_id == "000000005802"
    assert first.sample_id == "m-000000" and first.extra["id_generated"] is True
    assert parts.sample_id == "parts" and parts.turns[0].text == "Describe."
    assert text_only.image is None


def test_conversations_flavour_and_system_turns(tmp_path: Path) -> None:
    source = tmp_path / "c.jsonl"  # JSON lines are read too
    source.write_text("\n".join(json.dumps(r) for r in CONVERSATIONS) + "\n", encoding="utf-8")
    first, second = _read(source, tmp_path)
    assert first.extra["sharegpt_flavour"] == "conversations"
    assert first.turns[0].text == "What colour is it?"
    assert first.extra["image_token"]["placement"] == "after"
    assert second.sample_id == "7" and second.extra["id"] == 7


def test_edited_parts_keep_their_image_part(tmp_path: Path) -> None:
    source = tmp_path / "m.json"
    source.write_text(json.dumps(MESSAGES[1:2]), encoding="utf-8")
    (sample,) = _read(source, tmp_path)
    sample.turns[0].text = "Describe it in detail."
    out = tmp_path / "out.json"
    ShareGptWriter().write([sample], out)
    content = json.loads(out.read_text())[0]["messages"][0]["content"]
    assert content == [{"type": "image"}, {"type": "text", "text": "Describe it in detail."}]


def test_unsupported_roles_and_types_are_failed_samples(tmp_path: Path) -> None:
    records = [
        {"messages": [{"role": "tool", "content": "{}"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"conversations": "nope"},
        {"prompt": "neither flavour"},
    ]
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    samples = _read(source, tmp_path)
    reasons = [str(sample.failure_reason) for sample in samples]
    assert "'tool'" in reasons[0]
    assert "`messages[0].content` is a number" in reasons[1]
    assert "`conversations` is a string" in reasons[2]
    assert "neither `messages` nor `conversations`" in reasons[3]


def test_llava_samples_become_messages_and_come_back(llava_slice: Path, tmp_path: Path) -> None:
    context = ImportContext(images=None, workdir=tmp_path)
    samples = list(LlavaReader().read(llava_slice, context))[:50]
    out = tmp_path / "sharegpt.json"
    ShareGptWriter().write(samples, out)
    records = json.loads(out.read_text())
    assert set(records[0]) == {"id", "messages", "images"}
    assert records[0]["images"] == [samples[0].image]
    again = _read(out, tmp_path)
    for original, read in zip(samples, again, strict=True):
        assert (read.sample_id, read.turns, read.image) == (
            original.sample_id,
            original.turns,
            original.image,
        )
    conversations = tmp_path / "conversations.json"
    ShareGptWriter(flavour="conversations").write(samples, conversations)
    assert json.loads(conversations.read_text())[0]["conversations"][1]["from"] == "gpt"
    with pytest.raises(ConfigError, match="use one of: messages, conversations"):
        ShareGptWriter(flavour="chatml")


def test_detect_format(tmp_path: Path, llava_slice: Path) -> None:
    files = {
        "m.json": (json.dumps(MESSAGES), "sharegpt"),
        "c.json": (json.dumps(CONVERSATIONS), "sharegpt"),
        "l.jsonl": (json.dumps({"sample_id": "a", "turns": []}) + "\n", "jsonl"),
        "mimic.json": (
            json.dumps(
                {
                    "meta": {"version": "0.0.1"},
                    "data": {
                        "I0": {
                            "instruction": "q",
                            "answer": "a",
                            "image_ids": [],
                            "rel_ins_ids": [],
                        }
                    },
                }
            ),  # noqa: E501
            "mimicit",
        ),
        "paper.json": (
            json.dumps({"image_source": "COCO 2014", "annotations": []}),
            "paper",
        ),
        "x.parquet": ("PAR1", "parquet"),
    }
    for name, (text, expected) in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert detect_format(tmp_path / name) == expected, name
    assert detect_format(llava_slice) == "llava"
    (tmp_path / "odd.json").write_text(json.dumps([{"question": "?"}]))
    with pytest.raises(InputFileError) as raised:
        detect_format(tmp_path / "odd.json")
    assert "pass --format, one of: " + ", ".join(FORMAT_NAMES) in str(raised.value)
