"""LLaVA conversation JSON: lossless round trips on the real slice and on unusual records."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vlit.formats import DatasetImporter, ImportContext
from vlit.formats.base import write_json_array
from vlit.formats.llava import LlavaReader, LlavaWriter
from vlit.schema import Sample, Turn


def _read(path: Path, tmp_path: Path, images: Path | None = None) -> list[Sample]:
    context = ImportContext(images=images, workdir=tmp_path / "work")
    return list(LlavaReader().read(path, context))


@pytest.fixture(scope="module")
def slice_records(llava_slice: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(llava_slice.read_text(encoding="utf-8"))
    return records


def test_slice_round_trip_is_byte_identical(llava_slice: Path, tmp_path: Path) -> None:
    samples = _read(llava_slice, tmp_path)
    out = tmp_path / "again.json"
    counts = LlavaWriter().write(samples, out)
    assert counts.samples == len(samples) == 2183
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(llava_slice.read_text())
    assert out.read_bytes() == llava_slice.read_bytes()


def test_slice_placements_are_counted_and_text_is_clean(
    llava_slice: Path, slice_records: list[dict[str, Any]], tmp_path: Path
) -> None:
    firsts = [record["conversations"][0]["value"] for record in slice_records]
    before = sum(value.startswith("<image>\n") for value in firsts)
    after = sum(value.endswith("\n<image>") for value in firsts)
    assert before > 0 and after > 0 and before + after == len(slice_records)

    importer = DatasetImporter(reader=LlavaReader(), images=None, workdir=tmp_path / "work")
    samples = list(importer.samples(llava_slice))
    summary = importer.summary()
    assert summary["image_token_placement"] == {"before": before, "after": after}
    # the slice ships without images: every one is missing, and that is not a failure
    assert summary["images_missing"] == len(samples) and summary["samples_failed"] == 0
    assert all(sample.provenance["image_status"] == "missing" for sample in samples)
    for sample, record, first in zip(samples, slice_records, firsts, strict=True):
        assert sample.sample_id == record["id"] and sample.image == record["image"]
        assert all("<image>" not in turn.text for turn in sample.turns)
        assert first.replace("<image>", "").strip("\n") == sample.turns[0].text
        assert [turn.role for turn in sample.turns] == ["user", "assistant"]
        assert sample.turns[1].text == record["conversations"][1]["value"]


UNUSUAL = [
    {"id": 17, "image": "a/17.jpg", "conversations": [
        {"from": "human", "value": "Look at <image> closely. What is it?"},
        {"from": "gpt", "value": "A cat."}]},
    {"conversations": [{"from": "human", "value": "No image here."},
                       {"from": "gpt", "value": "Fine."}], "source": "text-only"},
    {"image": "b.jpg", "id": "b", "conversations": [
        {"from": "user", "value": "<image>Describe."},
        {"from": "assistant", "value": "Sunny.", "weight": 0.5}], "meta": {"k": [1, 2]}},
    {"id": "c", "image": ["c1.jpg", "c2.jpg"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare them."},
        {"from": "gpt", "value": "Same."}]},
    {"id": "d", "image": "d.jpg", "conversations": [
        {"from": "human", "value": "Question one?"}, {"from": "gpt", "value": "One."},
        {"from": "human", "value": "And <image>"}, {"from": "gpt", "value": "Two."}]},
]  # fmt: skip


@pytest.mark.parametrize("indent", [None, 4])
def test_unusual_records_round_trip(tmp_path: Path, indent: int | None) -> None:
    source = tmp_path / "unusual.json"
    source.write_text(json.dumps(UNUSUAL, indent=indent), encoding="utf-8")
    samples = _read(source, tmp_path)
    assert all(sample.ok for sample in samples)
    out = tmp_path / "out.json"
    LlavaWriter(indent=indent).write(samples, out)
    assert json.loads(out.read_text()) == UNUSUAL
    assert out.read_bytes() == source.read_bytes()  # key order and id types kept

    by_index = dict(enumerate(samples))
    assert (
        by_index[0].sample_id == "17"
        and by_index[0].turns[0].text == "Look at closely. What is it?"
    )
    assert by_index[1].image is None and by_index[1].sample_id == "unusual-000001"
    assert by_index[2].turns[0].text == "Describe." and by_index[2].image == "b.jpg"
    assert by_index[3].image == "c1.jpg" and by_index[3].turns[0].text == "Compare them."
    assert by_index[4].turns[2].text == "And"  # the token may sit in a later turn


def test_edited_text_keeps_the_token_where_it_was(tmp_path: Path) -> None:
    source = tmp_path / "one.json"
    source.write_text(json.dumps(UNUSUAL[3:5]), encoding="utf-8")
    samples = _read(source, tmp_path)
    samples[0].turns[0].text = "Compare both pictures."
    samples[1].turns[2].text = "And this one?"
    out = tmp_path / "out.json"
    LlavaWriter().write(samples, out)
    records = json.loads(out.read_text())
    assert records[0]["conversations"][0]["value"] == "<image>\n<image>\nCompare both pictures."
    assert records[1]["conversations"][2]["value"] == "And this one? <image>"


def test_invalid_records_are_kept_and_written_back(tmp_path: Path) -> None:
    records = [
        {"id": "ok", "image": "x.jpg", "conversations": [{"from": "human", "value": "Hi?"}]},
        {"id": "str", "image": "x.jpg", "conversations": "human: hi"},
        {"id": "num", "conversations": [{"from": "human", "value": 42}]},
        {"id": "who", "conversations": [{"from": "robot", "value": "beep"}]},
        ["not", "a", "record"],
    ]
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    samples = _read(source, tmp_path)
    assert [sample.sample_id for sample in samples] == ["ok", "str", "num", "who", "bad-000004"]
    assert samples[0].ok
    assert "`conversations` is a string, expected a list" in str(samples[1].failure_reason)
    assert "record 1 (id str)" in str(samples[1].failure_reason)
    assert "`conversations[0].value` is a number" in str(samples[2].failure_reason)
    assert "'robot'" in str(samples[3].failure_reason)
    assert "the record is a list" in str(samples[4].failure_reason)
    out = tmp_path / "out.json"
    LlavaWriter(indent=None).write(samples, out)
    # an image without its token gets one (LLaVA's rule); invalid records come back verbatim
    fixed = {**records[0], "conversations": [{"from": "human", "value": "<image>\nHi?"}]}
    assert json.loads(out.read_text()) == [fixed, *records[1:]]


def test_vlit_samples_to_llava_and_back(tmp_path: Path) -> None:
    made = [
        Sample(
            sample_id="gen-1",
            image="000000005802.jpg",
            image_id="000000005802",
            turns=[
                Turn(role="user", text="What is on the plate?"),
                Turn(role="assistant", text="Broccoli."),
                Turn(role="user", text="Is it cooked?"),
                Turn(role="assistant", text="It looks steamed."),
            ],
        ),
        Sample(sample_id="gen-2", turns=[Turn(role="user", text="Hi"), Turn("assistant", "Hello")]),
    ]
    out = tmp_path / "made.json"
    LlavaWriter().write(made, out)
    records = json.loads(out.read_text())
    assert records[0]["conversations"][0] == {
        "from": "human",
        "value": "<image>\nWhat is on the plate?",
    }
    assert "image" not in records[1] and records[1]["conversations"][0]["value"] == "Hi"
    again = _read(out, tmp_path, images=tmp_path)
    for original, read in zip(made, again, strict=True):
        assert read.sample_id == original.sample_id
        assert read.turns == original.turns
        assert read.image == original.image
        assert read.image_id == original.image_id


_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()  # lone surrogates, control characters, quotes, non-Latin text
)
_JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


_EDGES = [
    {"f": [float("nan"), float("inf"), -float("inf"), -0.0, 1e-7, 1e300, 2.0], "i": [-(10**30), 0]},
    {"e": [[], {}, [[]], [{}], ()], "b": [True, False, None], "s": 'é \u2028 \ud800 "\\ \n\t'},
    [],
    {},
    "plain",
]


@settings(max_examples=300, deadline=None)
@example(items=_EDGES, indent=4, ensure_ascii=True)
@example(items=_EDGES, indent=2, ensure_ascii=False)
@example(items=_EDGES, indent=0, ensure_ascii=True)
@given(
    items=st.lists(_JSON_VALUES, max_size=5),
    indent=st.sampled_from([None, 0, 1, 2, 4]),
    ensure_ascii=st.booleans(),
)
def test_json_arrays_are_written_as_json_dumps_writes_them(
    items: list[Any], indent: int | None, ensure_ascii: bool
) -> None:
    handle = io.StringIO()
    assert write_json_array(handle, items, indent=indent, ensure_ascii=ensure_ascii) == len(items)
    assert handle.getvalue() == json.dumps(items, indent=indent, ensure_ascii=ensure_ascii)


class _Tag(str):
    """A str subclass: `json.dumps` writes it as a plain string."""


def test_unusual_values_are_written_or_refused_as_json_dumps_does() -> None:
    unusual = [{1: "a", 2.5: [None], False: {}, None: 0}, _Tag("x"), {"k": (_Tag("y"), 3)}]
    handle = io.StringIO()
    write_json_array(handle, unusual, indent=4, ensure_ascii=True)
    assert handle.getvalue() == json.dumps(unusual, indent=4)
    circular: dict[str, Any] = {"a": 1}
    circular["self"] = circular
    for bad in (circular, {"when": object()}, {(1, 2): "tuple key"}):
        with pytest.raises((ValueError, TypeError)) as expected:
            json.dumps(bad, indent=4)
        with pytest.raises(type(expected.value), match=str(expected.value)):
            write_json_array(io.StringIO(), [bad], indent=4, ensure_ascii=True)
