"""The streaming JSON array reader: the same values as `json.loads` for any array, at any
chunk size; any damage is one `InputFileError` naming the file and the place."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlit.errors import InputFileError
from vlit.jsonio import iter_json_array, loads_json, starts_with_array

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FILES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "data.json"
    path.write_bytes(data)
    return path


@FILES
@given(
    values=st.lists(JSON_VALUES, max_size=12),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
    bom=st.booleans(),
    chunk_size=st.integers(1, 64),
)
def test_any_array_streams_to_the_values_json_loads_gives(
    tmp_path_factory: pytest.TempPathFactory,
    values: list[object],
    indent: int | None,
    ascii_only: bool,
    bom: bool,
    chunk_size: int,
) -> None:
    text = json.dumps(values, indent=indent, ensure_ascii=ascii_only)
    data = (b"\xef\xbb\xbf" if bom else b"") + f"\n {text} \n".encode()
    path = _write(tmp_path_factory.mktemp("array"), data)
    assert starts_with_array(path)
    assert list(iter_json_array(path, what="dataset", chunk_size=chunk_size)) == values


@FILES
@given(
    values=st.lists(JSON_VALUES, min_size=1, max_size=8),
    cut=st.floats(0.0, 0.999),
    chunk_size=st.integers(1, 64),
)
def test_a_truncated_array_is_one_error_naming_the_file(
    tmp_path_factory: pytest.TempPathFactory, values: list[object], cut: float, chunk_size: int
) -> None:
    data = json.dumps(values, indent=1).encode()
    path = _write(tmp_path_factory.mktemp("cut"), data[: int(len(data) * cut)])
    with pytest.raises(InputFileError) as raised:
        list(iter_json_array(path, what="dataset", chunk_size=chunk_size))
    assert str(path) in str(raised.value)


@FILES
@given(
    values=st.lists(JSON_VALUES, min_size=1, max_size=8),
    position=st.floats(0.0, 0.999),
    byte=st.integers(0, 255),
    chunk_size=st.integers(1, 64),
)
def test_a_damaged_byte_gives_the_values_or_one_error(
    tmp_path_factory: pytest.TempPathFactory,
    values: list[object],
    position: float,
    byte: int,
    chunk_size: int,
) -> None:
    data = bytearray(json.dumps(values, indent=1).encode())
    data[int(len(data) * position)] = byte
    path = _write(tmp_path_factory.mktemp("flip"), bytes(data))
    try:  # the whole-document reader, whose rules (lone surrogates to U+FFFD) it shares
        expected = loads_json(bytes(data), file=path, what="dataset")
    except InputFileError:
        expected = None
    try:
        streamed = list(iter_json_array(path, what="dataset", chunk_size=chunk_size))
    except InputFileError as error:
        assert str(path) in str(error)
        return
    assert isinstance(expected, list) and streamed == expected


def test_the_error_names_the_line_and_column_across_chunks(tmp_path: Path) -> None:
    lines = ['[{"id": 1},'] + [f' {{"id": {n}}},' for n in range(2, 200)] + [' {"id": }]']
    path = _write(tmp_path, "\n".join(lines).encode())
    with pytest.raises(InputFileError, match=r"line 200, column 9 \(Expecting value\)"):
        list(iter_json_array(path, what="dataset", chunk_size=7))


def test_an_unfinished_file_says_it_looks_truncated(tmp_path: Path) -> None:
    path = _write(tmp_path, b'[{"id": 1}, {"id": 2')
    with pytest.raises(InputFileError, match="looks truncated"):
        list(iter_json_array(path, what="dataset", chunk_size=4))


def test_memory_holds_one_element_not_the_file(tmp_path: Path) -> None:
    record = {"id": "x", "conversations": [{"from": "human", "value": "word " * 40}]}
    path = tmp_path / "big.json"
    with path.open("w") as handle:
        handle.write("[" + ",".join(json.dumps(record) for _ in range(40_000)) + "]")
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in iter_json_array(path, what="dataset", chunk_size=1 << 16))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 40_000
    assert size > 9_000_000 and peak < size / 20, (size, peak)


def test_an_element_nested_past_the_limit_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLIT_MAX_JSON_DEPTH", "5")
    path = _write(tmp_path, b'[[[[1]]], {"a": [[[[[[2]]]]]]}]')
    with pytest.raises(
        InputFileError, match=r"record 1.*nested 7 levels deep.*VLIT_MAX_JSON_DEPTH"
    ):
        list(iter_json_array(path, what="dataset", chunk_size=3))


def test_lone_surrogates_become_replacement_characters_as_in_loads_json(tmp_path: Path) -> None:
    path = _write(tmp_path, b'[{"text": "a\\ud800b"}, "\\udfff"]')
    assert list(iter_json_array(path, what="dataset")) == [{"text": "a\ufffdb"}, "\ufffd"]
