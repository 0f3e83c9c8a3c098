"""What every format shares: the reader and writer contracts, JSON input with clear errors,
streamed JSON output, and the keys under which source fields are kept in ``Sample.extra``.

Keys of ``Sample.extra`` written by readers (documented once, here):

- ``source_format``: the format a sample was read from; a writer restores format-specific
  details (role names, key order, unknown fields) only for samples of its own format.
- ``fields``: fields of the source record that vlit does not model, by name.
- ``key_order``: the source record's key order, when it differs from the format's usual one.
- ``id``: the source id when it was not a string (e.g. an int); ``id_generated``: true when the
  record had no id and vlit made one up (the writer then leaves it out again).
- ``image_token``: where the ``<image>`` token stood (see `vlit.formats.image_token`).
- ``raw_record``: an invalid record, verbatim (the sample also has a ``failure_reason``).
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring, encode_basestring_ascii
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol

from vlit.errors import InputFileError, RecordError
from vlit.fileio import atomic_output
from vlit.images import (
    is_url,
    join_url,
    read_remote_bytes,
    reference_problem,
    resolve_image_path,
)
from vlit.jsonio import (
    iter_json_array,
    json_type_name,
    loads_json,
    parse_json_bytes,
    starts_with_array,
)
from vlit.reasons import INVALID_RECORD, Reason
from vlit.schema import Sample

SOURCE_FORMAT = "source_format"
FIELDS = "fields"
KEY_ORDER = "key_order"
ORIGINAL_ID = "id"
ID_GENERATED = "id_generated"
RAW_RECORD = "raw_record"
IMPORT_PROVENANCE = "import"

_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_PICKLE_MAGIC = b"\x80"


@dataclass(frozen=True, kw_only=True)
class ImportContext:
    """Where a reader finds images and may unpack them.

    ``images`` is what the user passed with ``--images``: the image folder (a local path, or a
    URL such as ``s3://bucket/coco/train2017``), or for MIMIC-IT the images Parquet file;
    ``None`` lets the reader choose its default. ``workdir`` is a folder (in the run directory)
    where readers that receive encoded images write them as files.
    """

    images: Path | str | None
    workdir: Path

    def image_root(self, default: Path) -> str:
        """The image root samples record: a URL as given, else the resolved local folder
        (``--images``, or ``default``)."""
        return self.given_image_root() or str(default.resolve())

    def given_image_root(self) -> str | None:
        """``--images`` as an image root (URL as given, local folder resolved), or None."""
        if self.images is None:
            return None
        if isinstance(self.images, str) and is_url(self.images):
            return self.images.rstrip("/")
        return str(Path(self.images).resolve())


class FormatReader(Protocol):
    """Reads one dataset file into samples, one per conversation, streaming where it can.

    ``counts`` collects reader-specific counts (e.g. ``images_not_in_parquet``) that the
    importer adds to its summary.
    """

    name: ClassVar[str]
    counts: Counter[str]

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]: ...


class FormatWriter(Protocol):
    """Writes samples to one dataset file (plus side files, e.g. MIMIC-IT's images Parquet)."""

    name: ClassVar[str]

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts: ...


@dataclass
class WriteCounts:
    """What a writer did: samples written, samples it could not express, images embedded."""

    samples: int = 0
    turns: int = 0
    skipped_unconvertible: int = 0
    images_embedded: int = 0
    images_missing: int = 0
    path_escapes: int = 0
    images_reencoded: int = 0
    image_token_mismatch: int = 0
    image_tokens_added: int = 0
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        """Keep the first few problems as examples for the summary."""
        if len(self.problems) < 5:
            self.problems.append(problem)


def read_image_bytes(root: str, reference: str, *, label: str, counts: WriteCounts) -> bytes | None:
    """The bytes of an image a writer embeds, or ``None`` counted and noted under ``label``
    (an id naming the sample or image) when the reference escapes ``root`` or the file is gone.
    ``root`` may be a URL (``s3://...``): the object is then read through fsspec.
    """
    if is_url(root) and reference_problem(reference) is None:
        try:
            return read_remote_bytes(join_url(root, reference))
        except OSError as error:
            counts.images_missing += 1
            counts.note(f"{label}: {error}")
            return None
    try:
        path = resolve_image_path(root, reference)
    except RecordError as problem:
        counts.path_escapes += 1
        counts.note(f"{label}: {problem.problem}")
        return None
    try:
        return path.read_bytes()
    except OSError:
        counts.images_missing += 1
        counts.note(f"{label}: image {path} not found")
        return None


# -- input ---------------------------------------------------------------------------------------
def check_input_file(path: Path) -> None:
    """Raise `InputFileError` unless ``path`` is an existing, non-empty, non-pickle file."""
    if not path.exists():
        raise InputFileError("file not found", file=str(path), fix="check the path")
    if path.is_dir():
        raise InputFileError(
            "expected a file but got a folder", file=str(path), fix="pass the dataset file"
        )
    with path.open("rb") as handle:
        head = handle.read(1)
    if not head:
        raise InputFileError("the file is empty", file=str(path), fix="re-download or re-export it")
    if head == _PICKLE_MAGIC:
        raise InputFileError(
            "the file is a pickle; vlit does not load pickles because that runs code",
            file=str(path),
            fix="convert it to JSON in a Python you trust",
        )


def load_json_document(
    path: Path,
    *,
    expected: type,
    what: str,
    fix_type: str,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse a whole JSON file whose top level must be ``expected`` (``list`` or ``dict``).

    Errors name the file, the line and column, and the fix, in one line.
    """
    check_input_file(path)
    document = parse_json_bytes(
        path.read_bytes(), file=path, what="dataset", object_pairs_hook=object_pairs_hook
    )
    if not isinstance(document, expected):
        raise InputFileError(
            f"the top level is {json_type_name(document)}, but {what} is "
            f"{'a list of records' if expected is list else 'an object'}",
            file=str(path),
            fix=fix_type,
        )
    return document


def parse_json_records(
    path: Path,
    *,
    source_format: str,
    what: str,
    fix_type: str,
    parse: Callable[[Any, int], Sample],
    id_key: str = "id",
) -> Iterator[tuple[int, Sample, bool]]:
    """(index, sample, parsed) for each record of a JSON array or JSON-lines file.

    ``parse(record, index)`` makes the sample; a record it refuses with `RecordError` (or a
    JSON-lines line that does not parse) becomes an `invalid_sample` with ``parsed`` false, so
    one bad record never stops the file. ``id_key`` names the record's id field, used for the
    invalid sample's id.
    """
    for index, record in iter_json_records(path, what=what, fix_type=fix_type):
        try:
            if isinstance(record, RecordError):
                raise record
            sample = parse(record, index)
        except RecordError as problem:
            raw = None if isinstance(record, RecordError) else record
            record_id = raw.get(id_key) if isinstance(raw, dict) else None
            invalid = invalid_sample(
                record=raw,
                index=index,
                problem=problem.problem,
                source_format=source_format,
                file=path,
                sample_id=sample_id_for(record_id, stem=path.stem, index=index)[0],
            )
            yield index, invalid, False
            continue
        yield index, sample, True


def iter_json_records(path: Path, *, what: str, fix_type: str) -> Iterator[tuple[int, Any]]:
    """(index, record) of a JSON array file, or of a JSON-lines file (``.jsonl``), streaming:
    neither is loaded whole.

    A JSON-lines line that does not parse is yielded as an `RecordError` instance so the caller
    can keep it as a failed sample; a JSON array that does not parse is an `InputFileError`.
    """
    if path.suffix.lower() in _JSON_LINES_SUFFIXES:
        yield from _iter_json_lines(path)
        return
    check_input_file(path)
    if not starts_with_array(path):
        load_json_document(path, expected=list, what=what, fix_type=fix_type)  # says what is wrong
    yield from enumerate(iter_json_array(path, what="dataset"))


def _iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    check_input_file(path)
    with path.open("rb") as handle:
        index = 0
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield index, loads_json(line, file=path, what="dataset", record=index)
            except InputFileError as error:
                yield (
                    index,
                    RecordError(
                        f"line {number}: {error.problem}",
                        file=str(path),
                        record=index,
                        fix="repair or delete that line",
                    ),
                )
            index += 1


def require_type(value: Any, expected: type | tuple[type, ...], where: str) -> None:
    """Raise `RecordError` ("`where` is a string, expected ...") unless ``value`` fits."""
    wanted = expected if isinstance(expected, tuple) else (expected,)
    is_bool_for_number = isinstance(value, bool) and bool not in wanted
    if is_bool_for_number or not isinstance(value, wanted):
        names = {list: "a list", dict: "an object", str: "a string", int: "an integer"}
        raise RecordError(
            f"{where} is {json_type_name(value)}, expected "
            + " or ".join(names.get(kind, kind.__name__) for kind in wanted)
        )


def record_label(index: int, record_id: Any) -> str:
    """``"17 (id 000019465)"``: how messages point at one record."""
    if isinstance(record_id, str | int) and not isinstance(record_id, bool):
        return f"{index} (id {record_id})"
    return str(index)


def invalid_sample(
    *,
    record: Any,
    index: int,
    problem: str,
    source_format: str,
    file: Path,
    sample_id: str,
) -> Sample:
    """A sample standing for a record that could not be read: kept, with the record verbatim."""
    record_id = record.get("id") if isinstance(record, dict) else None
    return Sample(
        sample_id=sample_id,
        failure_reason=Reason(
            INVALID_RECORD, f"record {record_label(index, record_id)}: {problem}"
        ),
        provenance={IMPORT_PROVENANCE: import_provenance(source_format, file, index)},
        extra={SOURCE_FORMAT: source_format, RAW_RECORD: record},
    )


def invalid_passthrough(sample: Sample, name: str, counts: WriteCounts) -> tuple[bool, Any]:
    """How a writer treats a sample that stands for an invalid source record.

    Returns ``(False, None)`` for an ordinary sample; ``(True, record)`` when the sample came
    from this very format (the record is written back verbatim, nothing lost); ``(True,
    None)`` when it cannot be written (another format, or a line that never parsed): counted.
    """
    if RAW_RECORD not in sample.extra:
        return False, None
    raw = sample.extra[RAW_RECORD]
    if raw is None or not same_format(sample, name):
        counts.skipped_unconvertible += 1
        counts.note(f"{sample.sample_id}: {sample.failure_reason}")
        return True, None
    counts.samples += 1
    return True, raw


def import_provenance(source_format: str, file: Path, index: int) -> dict[str, Any]:
    return {"format": source_format, "file": _absolute(file), "record": index}


@functools.lru_cache(maxsize=16)
def _absolute(file: Path) -> str:
    return str(file.resolve())


def sample_id_for(record_id: Any, *, stem: str, index: int) -> tuple[str, dict[str, Any]]:
    """The sample id for a source id, and the ``extra`` entries that restore it exactly."""
    if isinstance(record_id, str) and record_id:
        return record_id, {}
    if isinstance(record_id, int | float) and not isinstance(record_id, bool):
        return str(record_id), {ORIGINAL_ID: record_id}
    if record_id == "":  # an empty id is still an id to write back
        return f"{stem}-{index:06d}", {ORIGINAL_ID: ""}
    return f"{stem}-{index:06d}", {ID_GENERATED: True}


def restore_id(sample: Sample) -> Any:
    """The id to write for a sample (its original type), or ``None`` if it had none."""
    if sample.extra.get(ID_GENERATED):
        return None
    return sample.extra.get(ORIGINAL_ID, sample.sample_id)


def same_format(sample: Sample, name: str) -> bool:
    return bool(sample.extra.get(SOURCE_FORMAT) == name)


def unknown_fields(record: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    known_set = set(known)
    return {key: value for key, value in record.items() if key not in known_set}


def key_order_extra(record: dict[str, Any], conventional: list[str]) -> dict[str, Any]:
    """``{"key_order": [...]}`` when the record's keys are not in the conventional order."""
    keys = list(record)
    usual = [key for key in conventional if key in record] + [
        key for key in keys if key not in conventional
    ]
    return {} if keys == usual else {KEY_ORDER: keys}


def ordered(record: dict[str, Any], key_order: list[str] | None) -> dict[str, Any]:
    """``record`` with its keys in ``key_order`` first (keys it lacks are skipped)."""
    if not key_order:
        return record
    result = {key: record[key] for key in key_order if key in record}
    result.update({key: value for key, value in record.items() if key not in result})
    return result


# -- output --------------------------------------------------------------------------------------
def write_record_array(
    samples: Iterable[Sample],
    path: Path,
    to_record: Callable[[Sample, WriteCounts], Any],
    *,
    indent: int | None,
    ensure_ascii: bool,
) -> WriteCounts:
    """Write ``to_record(sample, counts)`` of each sample as one JSON array at ``path``,
    streaming and atomically; a ``None`` record (a sample the format cannot express, counted
    by ``to_record``) is left out."""
    counts = WriteCounts(files=[str(path)])
    records = (
        record for record in (to_record(sample, counts) for sample in samples) if record is not None
    )
    with atomic_output(path) as handle:
        write_json_array(handle, records, indent=indent, ensure_ascii=ensure_ascii)
    return counts


def write_json_array(
    handle: IO[str], items: Iterable[Any], *, indent: int | None, ensure_ascii: bool
) -> int:
    """Stream a JSON array, byte for byte what ``json.dump(list(items), indent=...)`` writes."""
    count = 0
    if indent is None:
        handle.write("[")
        for item in items:
            handle.write(", " if count else "")
            handle.write(json.dumps(item, ensure_ascii=ensure_ascii))
            count += 1
        handle.write("]")
        return count
    pad = " " * indent
    quote = encode_basestring_ascii if ensure_ascii else encode_basestring
    for item in items:
        parts: list[str] = [pad]
        try:
            _indented(item, parts, "\n" + pad + pad, pad, quote)
            text = "".join(parts)
        except (_Unusual, RecursionError):
            text = json.dumps(item, indent=indent, ensure_ascii=ensure_ascii)
            text = pad + text.replace("\n", "\n" + pad)
        handle.write(",\n" if count else "[\n")
        handle.write(text)
        count += 1
    handle.write("\n]" if count else "[]")
    return count


class _Unusual(Exception):
    """A value `_indented` leaves to `json.dumps` (a subclass, a key that is not a string)."""


def _indented(
    value: Any, parts: list[str], newline: str, step: str, quote: Callable[[str], str]
) -> None:
    """Append to ``parts`` the text ``json.dumps(value, indent=...)`` gives for ``value``
    nested under ``newline`` (a line break and the indent of its items): the same bytes,
    without the generators and the reference cycles that ``json.dumps`` leaves per call.
    Raises `_Unusual` for any type but plain str, int, float, bool, None, list, tuple and dict
    with str keys."""
    kind = type(value)
    if kind is str:
        parts.append(quote(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif kind is int:
        parts.append(int.__repr__(value))
    elif kind is float:
        parts.append(_float_text(value))
    elif kind is list or kind is tuple:
        if not value:
            parts.append("[]")
            return
        inner = newline + step
        separator = "["
        for item in value:
            parts.append(separator + newline)
            separator = ","
            _indented(item, parts, inner, step, quote)
        parts.append(newline[: len(newline) - len(step)] + "]")
    elif kind is dict:
        if not value:
            parts.append("{}")
            return
        inner = newline + step
        separator = "{"
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            parts.append(separator + newline + quote(key) + ": ")
            separator = ","
            _indented(item, parts, inner, step, quote)
        parts.append(newline[: len(newline) - len(step)] + "}")
    else:
        raise _Unusual


def _float_text(value: float) -> str:
    """A float as `json.dumps` writes it (``allow_nan``: NaN, Infinity, -Infinity)."""
    if value != value:
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    return float.__repr__(value)
