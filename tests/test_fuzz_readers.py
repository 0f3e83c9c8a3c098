"""Property tests: every reader, fed mutated input (truncation, bit flips, deep nesting, wrong
types, huge fields, odd Unicode), either reads it or raises a `VlitError` whose message is one
line; nothing else escapes. Plus the invariants the guards rely on (nesting depth, image paths
stay inside their root, file names from ids never collide, stored rows decode or fail alone).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile_inputs import BOM, llava_record
from vlit.cli.edge import describe_error
from vlit.collect._io import load_json_file
from vlit.collect.jsonl import JsonlCollector
from vlit.errors import RecordError, VlitError
from vlit.evaluate.correlate import load_benchmark_results, load_indicator_tables
from vlit.evaluate.seed_bench import load_questions
from vlit.formats import FORMATS, DatasetImporter, detect_format
from vlit.generate.regions import region_image_name
from vlit.images import id_file_stem, resolve_image_path
from vlit.jsonio import loads_json, nesting_depth
from vlit.reasons import UNDECODABLE_ROW
from vlit.recipe import load_recipe
from vlit.schema import Sample, Turn

FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ODD_TEXT = [
    b"\\ud800",
    b"\\udfff\\ud800",
    "\ufeff".encode(),
    "\u202e".encode(),
    b"\x00",
    b"\\u0000",
    "e\u0301".encode(),
    "\U0001f600".encode(),
    "\uffff".encode(),
    b"\xed\xa0\x80",  # a surrogate encoded as UTF-8: not UTF-8
    b"[/x]",
]
WRONG_VALUES = [b"null", b"[]", b"{}", b"1e999", b"-0", b"true", b"9" * 5000, b'"' + b"[" * 300]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` damaged in one or two of the ways real files are."""
    data = seed
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["truncate", "flip", "deep", "wrong", "huge", "odd", "bom"]))
        at = draw(st.integers(0, len(data)))
        if kind == "truncate":
            data = data[:at]
        elif kind == "flip":
            flipped = bytearray(data)
            for _ in range(draw(st.integers(1, 8))):
                if flipped:
                    index = draw(st.integers(0, len(flipped) - 1))
                    flipped[index] ^= 1 << draw(st.integers(0, 7))
            data = bytes(flipped)
        elif kind == "deep":
            depth = draw(st.sampled_from([150, 3_000, 60_000]))
            opener = draw(st.sampled_from([b"[", b'{"a":']))
            closer = b"]" if opener == b"[" else b"}"
            data = data[:at] + opener * depth + b"1" + closer * draw(st.sampled_from([0, depth]))
        elif kind == "wrong":
            strings = [m.span() for m in re.finditer(rb'"[^"\\]*"', data)]
            if strings:
                start, end = draw(st.sampled_from(strings))
                data = data[:start] + draw(st.sampled_from(WRONG_VALUES)) + data[end:]
        elif kind == "huge":
            strings = [m.span() for m in re.finditer(rb'"[^"\\]*"', data)]
            if strings:
                start, end = draw(st.sampled_from(strings))
                data = data[:start] + b'"' + b"x" * 1_500_000 + b'"' + data[end:]
        elif kind == "odd":
            data = data[:at] + draw(st.sampled_from(ODD_TEXT)) + data[at:]
        else:
            data = BOM + data
    return data


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "images").mkdir()
        yield root


def read_or_refuse(read: Callable[[], Any]) -> None:
    """``read()`` returns, or raises a `VlitError` whose message is one line."""
    try:
        read()
    except VlitError as error:
        message = str(error)
        assert "\n" not in message and message.strip(), message
        assert len(describe_error(error)) <= 600


LLAVA = json.dumps([llava_record("a.jpg"), llava_record("b.jpg", record_id="r2")]).encode()
SHAREGPT = json.dumps(
    [
        {
            "id": "s1",
            "image": "a.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is this?"},
                {"from": "gpt", "value": "A cat."},
            ],
        }
    ]
).encode()
COLLECT_LINE = json.dumps(
    {
        "image_id": "k1",
        "file_name": "a.jpg",
        "captions": ["Two bottles."],
        "objects": [{"category": "bottle", "bbox": [1, 2, 3, 4]}],
        "vqa": [{"question": "How many?", "answers": ["2"]}],
    }
).encode()
SAMPLES_JSONL = json.dumps(
    {
        "sample_id": "s1",
        "turns": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "yo"}],
        "image": "a.jpg",
        "provenance": {"model": "m"},
    }
).encode()
PAPER = json.dumps(
    {
        "image_source": "COCO 2014",
        "annotations": [
            {
                "img_ids": "5802",
                "instruction_type": "conversation",
                "conversations": [{"User": "What is served?"}, {"AI": "Rice."}],
            }
        ],
    }
).encode()
MIMICIT = json.dumps(
    {
        "meta": {"version": "0.0.1"},
        "data": {
            "LA_00": {
                "instruction": "What is served?",
                "answer": "Rice.",
                "image_ids": ["LA_IMG_1"],
                "rel_ins_ids": [],
            }
        },
    }
).encode()
RECIPE = (
    b"run_dir: r\ncollect:\n  sources:\n    - {kind: jsonl, jsonl_file: a.jsonl, images_dir: i}\n"
)
QUESTIONS = json.dumps(
    {
        "questions": [
            {
                "answer": "A",
                "choice_a": "One",
                "choice_b": "Two",
                "choice_c": "Three",
                "choice_d": "Four",
                "data_id": "a.jpg",
                "question": "How many towels?",
                "question_id": "1",
                "question_type_id": 5,
            }
        ]
    }
).encode()
INDICATORS = json.dumps({"dataset": "d1", "indicators": {"md": 31.5, "balance": 2}}).encode()
RESULTS_CSV = b"dataset,model,dimension,accuracy\nd1,m,overall,50\nd2,m,overall,61.5\n"


def import_all(path: Path, name: str, workdir: Path) -> None:
    reader_class, _ = FORMATS[name]
    images = None if name == "mimicit" else workdir / "images"  # MIMIC-IT: images Parquet
    importer = DatasetImporter(reader=reader_class(), images=images, workdir=workdir / "unpacked")
    for _ in importer.samples(path):
        pass


READERS: dict[str, tuple[bytes, str, Callable[[Path, Path], Any]]] = {
    "llava": (LLAVA, ".json", lambda p, w: import_all(p, "llava", w)),
    "sharegpt": (SHAREGPT, ".json", lambda p, w: import_all(p, "sharegpt", w)),
    "paper": (PAPER, ".json", lambda p, w: import_all(p, "paper", w)),
    "mimicit": (MIMICIT, ".json", lambda p, w: import_all(p, "mimicit", w)),
    "samples jsonl": (SAMPLES_JSONL * 1, ".jsonl", lambda p, w: import_all(p, "jsonl", w)),
    "format sniffing": (SHAREGPT, ".json", lambda p, w: detect_format(p)),
    "coco json": (LLAVA, ".json", lambda p, w: load_json_file(p, what="COCO captions")),
    "collect jsonl": (
        COLLECT_LINE + b"\n" + COLLECT_LINE.replace(b"k1", b"k2"),
        ".jsonl",
        lambda p, w: JsonlCollector(jsonl_file=p, images_dir=w / "images").collect(),
    ),
    "recipe": (RECIPE, ".yaml", lambda p, w: load_recipe(p)),
    "bench questions": (QUESTIONS, ".json", lambda p, w: load_questions(p)),
    "indicator tables": (INDICATORS, ".json", lambda p, w: load_indicator_tables([p])),
    "results csv": (RESULTS_CSV, ".csv", lambda p, w: load_benchmark_results([p])),
    "results json": (
        json.dumps([{"dataset": "d", "model": "m", "dimension": "x", "accuracy": 1}]).encode(),
        ".json",
        lambda p, w: load_benchmark_results([p]),
    ),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_every_reader_reads_or_refuses_in_one_line(name: str, workdir: Path) -> None:
    seed, suffix, read = READERS[name]
    path = workdir / f"input{suffix}"

    @FUZZ
    @given(data=mutated(seed))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        read_or_refuse(lambda: read(path, workdir))

    path.write_bytes(seed)
    read(path, workdir)  # the seed itself is good input
    check()


# -- the invariants under the guards ------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n', max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@FUZZ
@given(value=json_values, ascii_only=st.booleans())
def test_nesting_depth_is_the_depth_of_the_parsed_document(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert nesting_depth(text) == depth_of(value)
    assert loads_json(text.encode(), file="x.json", what="test") == value


@FUZZ
@given(reference=st.text(alphabet="./\\ab\x00:~", max_size=30))
def test_a_resolved_image_path_never_leaves_its_root(reference: str, workdir: Path) -> None:
    root = (workdir / "images").resolve()
    try:
        resolved = resolve_image_path(root, reference)
    except RecordError:
        return
    assert resolved == root or root in resolved.parents


@FUZZ
@given(ids=st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=8, unique=True))
def test_file_names_made_from_distinct_ids_are_distinct(ids: list[str]) -> None:
    stems = [id_file_stem(identifier) for identifier in ids]
    assert len(set(stems)) == len(ids)
    assert all("/" not in stem and "\\" not in stem and not stem.startswith(".") for stem in stems)


def test_region_copies_of_lookalike_ids_do_not_collide() -> None:
    assert region_image_name("cam/1", 0) != region_image_name("cam_1", 0)
    assert region_image_name("391895", 3) == "regions/391895-obj3.jpg"  # plain ids stay readable


@FUZZ
@given(provenance=st.text(max_size=40), extra=st.text(max_size=40))
def test_a_stored_row_decodes_or_fails_alone(provenance: str, extra: str) -> None:
    row = Sample(sample_id="s", turns=[Turn("user", "hi")]).to_row()
    row["provenance"], row["extra"] = provenance, extra
    sample = Sample.from_row(row)
    for key, text in (("provenance", provenance), ("extra", extra)):
        try:
            good = isinstance(json.loads(text), dict) if text else True
        except ValueError:
            good = False
        assert good or f"stored {key}" in str(sample.failure_reason)
    assert sample.failure_reason is None or sample.failure_reason.code == UNDECODABLE_ROW
    assert isinstance(sample.provenance, dict) and isinstance(sample.extra, dict)
