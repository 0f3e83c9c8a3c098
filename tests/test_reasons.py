"""Failure and drop reasons are typed values: one code per kind of failure, and a text that
reads back as the same value from a stored shard row or a JSONL export."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from vlit.formats.jsonl import sample_from_json, sample_to_json
from vlit.generate import generator, parse
from vlit.reasons import (
    FAILURE_CODES,
    IMAGE_PATH_ESCAPES,
    IMAGE_UNREADABLE,
    INVALID_RECORD,
    UNDECODABLE_ROW,
    Reason,
    with_problem,
)
from vlit.schema import SAMPLE_SCHEMA, Sample, Turn
from vlit.stages import generate

#: The failures whose detail is always the same (the rest name the sample's own problem).
FIXED_FAILURES = [
    value
    for module in (parse, generator, generate)
    for value in vars(module).values()
    if isinstance(value, Reason)
]
#: Texts that earlier versions stored for these failures, as run directories still hold them.
OLD_TEXTS = [
    "not generated: the request budget is spent (rerun with a larger budget)",
    "llm request failed",
    "llm returned fewer generations than requested",
    "empty: the model returned no text",
    "unparseable: output cut off before the first complete answer",
    "skipped: nothing is annotated for this image, so there is no clue",
    "invalid record 17 (id 000019465): `turns` is a string, expected a list",
    "image unreadable: x.jpg is empty; image path escapes the image root: '../x.jpg'",
    "stored row 3 of part-00000.parquet cannot be decoded (KeyError: 'turns')",
]

codes = st.text(min_size=1, max_size=20).filter(lambda code: ": " not in code)
reasons = st.builds(Reason, codes, st.text(max_size=40)) | st.sampled_from(FIXED_FAILURES)


def test_every_failure_kind_has_its_own_code() -> None:
    assert len(FIXED_FAILURES) == 12
    fixed_codes = [reason.code for reason in FIXED_FAILURES]
    assert len(set(fixed_codes)) == len(fixed_codes)
    assert len(set(FAILURE_CODES)) == len(FAILURE_CODES)
    per_sample = {INVALID_RECORD, IMAGE_UNREADABLE, IMAGE_PATH_ESCAPES, UNDECODABLE_ROW}
    assert set(fixed_codes) | per_sample == set(FAILURE_CODES)
    assert not set(fixed_codes) & per_sample


@settings(max_examples=80, deadline=None)
@given(failure=st.none() | reasons, drop=st.none() | reasons)
def test_reasons_round_trip_through_a_stored_row_and_an_export(
    failure: Reason | None, drop: Reason | None
) -> None:
    sample = Sample(
        sample_id="s", turns=[Turn("user", "Q?")], failure_reason=failure, drop_reason=drop
    )
    if failure is not None:
        assert Reason.parse(str(failure)) == failure
    stored = pa.Table.from_pylist([sample.to_row()], schema=SAMPLE_SCHEMA).to_pylist()[0]
    assert stored["failure_reason"] == (None if failure is None else str(failure))
    assert Sample.from_row(stored) == sample
    assert sample_from_json(sample_to_json(sample)) == sample


@settings(max_examples=40, deadline=None)
@given(text=st.sampled_from(OLD_TEXTS) | st.builds(str, reasons))
def test_stored_texts_read_back_unchanged(text: str) -> None:
    assert str(Reason.parse(text)) == text


def test_several_problems_keep_the_first_code_and_every_text_once() -> None:
    escapes = Reason(IMAGE_PATH_ESCAPES, "image path escapes the image root: '/x.jpg'")
    assert with_problem(None, escapes) is escapes
    both = with_problem(escapes, Reason(IMAGE_UNREADABLE, "x.jpg is empty"))
    assert both.code == IMAGE_PATH_ESCAPES
    assert str(both) == (
        "image_path_escapes: image path escapes the image root: '/x.jpg'; "
        "image_unreadable: x.jpg is empty"
    )
    assert with_problem(both, Reason(IMAGE_UNREADABLE, "x.jpg is empty")) == both
    assert with_problem(both, escapes) == both
    same_code = with_problem(Reason(UNDECODABLE_ROW, "a"), Reason(UNDECODABLE_ROW, "b"))
    assert same_code == Reason(UNDECODABLE_ROW, "a; b")


def test_a_row_with_damaged_fields_fails_with_every_problem_once() -> None:
    row = Sample(sample_id="s", failure_reason=parse.FAILURE_NO_TURNS).to_row()
    row["provenance"], row["extra"] = "{not json", "[1]"
    sample = Sample.from_row(row)
    assert sample.failure_reason is not None
    assert sample.failure_reason.code == parse.FAILURE_NO_TURNS.code
    text = str(sample.failure_reason)
    assert text.startswith("unparseable: no User/AI turns found; undecodable_row: stored prov")
    assert text.endswith("; undecodable_row: stored extra is not a JSON object")
    damaged = Sample.from_row({**row, "failure_reason": None})
    assert damaged.failure_reason is not None and damaged.failure_reason.code == UNDECODABLE_ROW
    assert str(damaged.failure_reason).startswith("undecodable_row: stored provenance cannot")
    assert str(damaged.failure_reason).endswith("; stored extra is not a JSON object")
