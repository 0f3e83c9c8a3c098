"""MIMIC-IT / Otter: an instructions JSON plus an images Parquet (image id -> base64 image).

Instructions: ``{"meta": {...}, "data": {instruction_id: {"instruction", "answer",
"image_ids", "rel_ins_ids"}}}``. Images: a Parquet table indexed by image id (pandas writes the
index as a column and names it in the ``pandas`` schema metadata) with a ``base64`` column;
the older ``images.json`` (``{image_id: base64}``) is read too.

Import: instructions linked through ``rel_ins_ids`` that show the same images become the turns
of one conversation (in file order; the sample id is the first instruction id). Links to
instructions about other images stay in ``extra["rel_ins_ids"]``. Images are decoded once into
files in the run directory (the bytes as stored), so scorers read them like any image folder.

Export: the instructions JSON, plus the images Parquet next to it (``X_instructions.json`` ->
``X_images.parquet``) holding base64 JPEG bytes; JPEG files are copied without re-encoding,
other images are converted to JPEG (counted).

Example:
    >>> reader = MimicItReader()
    >>> context = ImportContext(images=Path("DallE3_images.parquet"), workdir=Path("run/images"))
    >>> samples = list(reader.read(Path("DallE3_instructions.json"), context))  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from vlit.errors import InputFileError, RecordError
from vlit.fileio import atomic_output, write_bytes_atomic
from vlit.formats.base import (
    IMPORT_PROVENANCE,
    KEY_ORDER,
    SOURCE_FORMAT,
    ImportContext,
    WriteCounts,
    check_input_file,
    import_provenance,
    invalid_passthrough,
    invalid_sample,
    key_order_extra,
    load_json_document,
    ordered,
    read_image_bytes,
    require_type,
    same_format,
)
from vlit.formats.export_images import sample_images
from vlit.images import guess_image_suffix, id_file_stem, open_image
from vlit.schema import Sample, Turn

INSTRUCTION_IDS = "instruction_ids"
REL_INS_IDS = "rel_ins_ids"
IMAGE_IDS = "image_ids"
IMAGE_FILES = "image_files"
FILE_META = "file_meta"
ENTRY_FIELDS = "entry_fields"
ENTRY_KEY_ORDER = "entry_key_order"
_ENTRY_KEYS = ["instruction", "answer", "image_ids", "rel_ins_ids"]
_PARQUET_BATCH = 256
_JPEG_QUALITY = 95


def images_path_for(instructions: Path) -> Path:
    """The images Parquet that goes with an instructions file (Otter's naming)."""
    name = instructions.name
    if name.endswith("_instructions.json"):
        return instructions.with_name(name[: -len("_instructions.json")] + "_images.parquet")
    return instructions.with_name(instructions.stem + "_images.parquet")


class MimicItReader:
    """Reads a MIMIC-IT instructions JSON and its images into samples.

    ``context.images`` is the images Parquet (or legacy JSON); by default the file named like
    the instructions (``X_instructions.json`` -> ``X_images.parquet``) if it exists.
    """

    name: ClassVar[str] = "mimicit"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]:
        document = load_json_document(
            path,
            expected=dict,
            what="a MIMIC-IT instructions file",
            fix_type='MIMIC-IT instructions are {"meta": ..., "data": {id: {...}}}; '
            "for another format pass --format (or --format auto)",
        )
        data = document.get("data")
        if not isinstance(data, dict):
            raise InputFileError(
                "the `data` field is missing or not an object of instructions",
                file=str(path),
                fix='MIMIC-IT instructions are {"meta": ..., "data": {id: {...}}}',
            )
        file_meta = {key: value for key, value in document.items() if key != "data"}
        entries: dict[str, dict[str, Any]] = {}
        failed: dict[str, Sample] = {}
        for index, (instruction_id, entry) in enumerate(data.items()):
            try:
                entries[instruction_id] = _checked_entry(entry)
            except RecordError as problem:
                failed[instruction_id] = invalid_sample(
                    record={instruction_id: entry},
                    index=index,
                    problem=f"instruction {instruction_id}: {problem.problem}",
                    source_format=self.name,
                    file=path,
                    sample_id=instruction_id,
                )
        image_files = self._unpack_images(path, context, entries)
        image_root = str(context.workdir.resolve())
        groups = _conversations(entries)
        positions = {instruction_id: index for index, instruction_id in enumerate(data)}
        for instruction_id in data:
            if instruction_id in failed:
                yield failed[instruction_id]
            elif groups.get(instruction_id, [None])[0] == instruction_id:
                sample = self._sample(groups[instruction_id], entries, image_files, file_meta)
                sample.image_root = image_root
                sample.provenance = {
                    IMPORT_PROVENANCE: import_provenance(self.name, path, positions[instruction_id])
                }
                yield sample

    def _sample(
        self,
        members: list[str],
        entries: dict[str, dict[str, Any]],
        image_files: dict[str, str],
        file_meta: dict[str, Any],
    ) -> Sample:
        first = entries[members[0]]
        image_ids: list[str] = list(first["image_ids"])
        turns: list[Turn] = []
        for member in members:
            turns.append(Turn(role="user", text=entries[member]["instruction"]))
            turns.append(Turn(role="assistant", text=entries[member]["answer"]))
        entry_fields = {
            member: fields
            for member in members
            if (fields := {k: v for k, v in entries[member].items() if k not in _ENTRY_KEYS})
        }
        entry_orders = {
            member: order[KEY_ORDER]
            for member in members
            if (order := key_order_extra(entries[member], _ENTRY_KEYS))
        }
        files = [image_files.get(image_id) for image_id in image_ids]
        image = files[0] if files else None
        if image_ids and image is None:
            image = id_file_stem(image_ids[0]) + ".jpg"  # not in the images file: missing
        return Sample(
            sample_id=members[0],
            turns=turns,
            image=image,
            image_id=image_ids[0] if image_ids else None,
            extra={
                SOURCE_FORMAT: self.name,
                INSTRUCTION_IDS: members,
                REL_INS_IDS: {member: entries[member]["rel_ins_ids"] for member in members},
                IMAGE_IDS: image_ids,
                IMAGE_FILES: files,
                FILE_META: file_meta,
                **({ENTRY_FIELDS: entry_fields} if entry_fields else {}),
                **({ENTRY_KEY_ORDER: entry_orders} if entry_orders else {}),
            },
        )

    def _unpack_images(
        self, path: Path, context: ImportContext, entries: dict[str, dict[str, Any]]
    ) -> dict[str, str]:
        """Decode the images the instructions use into files; image id -> file name."""
        wanted = {image_id for entry in entries.values() for image_id in entry["image_ids"]}
        images_file = Path(context.images) if context.images is not None else images_path_for(path)
        if not wanted:
            return {}
        if context.images is None and not images_file.exists():
            self.counts["images_file_absent"] += 1
            return {}
        check_input_file(images_file)
        context.workdir.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for image_id, encoded in _iter_base64_images(images_file):
            if image_id not in wanted or image_id in files:
                continue
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                self.counts["images_not_base64"] += 1
                continue
            name = id_file_stem(image_id) + guess_image_suffix(data)
            target = context.workdir / name
            if not (target.exists() and target.stat().st_size == len(data)):
                write_bytes_atomic(target, data)
            files[image_id] = name
        self.counts["images_not_in_images_file"] += len(wanted - set(files))
        return files


def _checked_entry(entry: Any) -> dict[str, Any]:
    """The entry, with absent ``image_ids`` / ``rel_ins_ids`` as empty lists; or RecordError."""
    require_type(entry, dict, "the instruction")
    require_type(entry.get("instruction"), str, "`instruction`")
    require_type(entry.get("answer"), str, "`answer`")
    require_type(entry.get("image_ids", []), list, "`image_ids`")
    require_type(entry.get("rel_ins_ids", []), list, "`rel_ins_ids`")
    for key in ("image_ids", "rel_ins_ids"):
        for position, item in enumerate(entry.get(key, [])):
            require_type(item, str, f"`{key}[{position}]`")
    return {
        **entry,
        "image_ids": entry.get("image_ids", []),
        "rel_ins_ids": entry.get("rel_ins_ids", []),
    }


def _conversations(entries: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Instruction id -> the ids of its conversation, in file order (union of related ids)."""
    parent = {instruction_id: instruction_id for instruction_id in entries}

    def find(item: str) -> str:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    order = {instruction_id: index for index, instruction_id in enumerate(entries)}
    for instruction_id, entry in entries.items():
        for related in entry["rel_ins_ids"]:
            if related in entries and entries[related]["image_ids"] == entry["image_ids"]:
                a, b = find(instruction_id), find(related)
                if a != b:
                    first, second = (a, b) if order[a] < order[b] else (b, a)
                    parent[second] = first
    groups: dict[str, list[str]] = {}
    for instruction_id in entries:
        groups.setdefault(find(instruction_id), []).append(instruction_id)
    return {member: members for members in groups.values() for member in members}


def _iter_base64_images(path: Path) -> Iterator[tuple[str, str]]:
    """(image id, base64 text) pairs of an images Parquet or legacy images JSON, streaming."""
    if path.suffix.lower() == ".json":
        document = load_json_document(
            path, expected=dict, what="a MIMIC-IT images JSON", fix_type="use {image_id: base64}"
        )
        for image_id, encoded in document.items():
            if isinstance(encoded, str):
                yield str(image_id), encoded
        return
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise InputFileError(
            f"cannot read the images Parquet ({error})",
            file=str(path),
            fix="re-download it; MIMIC-IT images are a Parquet of image id -> base64",
        ) from error
    id_column = _id_column(parquet.schema_arrow)
    if id_column is None or "base64" not in parquet.schema_arrow.names:
        raise InputFileError(
            "the images Parquet has no image id column and `base64` column "
            f"(columns: {', '.join(parquet.schema_arrow.names)})",
            file=str(path),
            fix="write it as pandas does: index = image id, one column `base64`",
        )
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=[id_column, "base64"]):
        ids = batch.column(0).to_pylist()
        encoded = batch.column(1).to_pylist()
        for image_id, text in zip(ids, encoded, strict=True):
            if image_id is not None and isinstance(text, str | bytes):
                yield str(image_id), text if isinstance(text, str) else text.decode("ascii")


def _id_column(schema: pa.Schema) -> str | None:
    metadata = schema.metadata or {}
    if b"pandas" in metadata:
        index_columns = json.loads(metadata[b"pandas"]).get("index_columns", [])
        named = [column for column in index_columns if isinstance(column, str)]
        if named and named[0] in schema.names:
            return named[0]
    for candidate in ("__index_level_0__", "image_id", "id", "key"):
        if candidate in schema.names:
            return candidate
    return None


class MimicItWriter:
    """Writes the instructions JSON and the images Parquet (base64 JPEG) beside it.

    Conversations become one instruction per user/assistant pair, linked to each other through
    ``rel_ins_ids``; a sample whose turns do not pair up is skipped and counted.
    ``file_meta`` is what goes beside ``data`` (default: the ``meta`` of samples read from
    MIMIC-IT, else a minimal ``{"meta": {...}}``).
    """

    name: ClassVar[str] = "mimicit"

    def __init__(
        self,
        *,
        images_path: Path | None = None,
        file_meta: dict[str, Any] | None = None,
        indent: int | None = 4,
    ) -> None:
        self.images_path = images_path
        self.file_meta = file_meta
        self.indent = indent

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts:
        images_path = self.images_path or images_path_for(path)
        counts = WriteCounts(files=[str(path), str(images_path)])
        data: dict[str, Any] = {}
        meta = self.file_meta
        image_sources: dict[str, tuple[str, str]] = {}
        for sample in samples:
            invalid, raw = invalid_passthrough(sample, self.name, counts)
            if invalid:
                if isinstance(raw, dict):
                    data.update(raw)
                continue
            if meta is None and same_format(sample, self.name):
                meta = sample.extra.get(FILE_META)
            entries = self._entries(sample, counts, image_sources)
            if entries is not None:
                data.update(entries)
        if meta is None:
            meta = {"meta": {"version": "0.0.1", "author": "vlit"}}
        document = {**meta, "data": data}
        with atomic_output(path) as handle:
            json.dump(document, handle, indent=self.indent, ensure_ascii=False)
        self._write_images(images_path, image_sources, counts)
        return counts

    def _entries(
        self, sample: Sample, counts: WriteCounts, image_sources: dict[str, tuple[str, str]]
    ) -> dict[str, Any] | None:
        pairs = _pairs(sample.turns)
        if pairs is None:
            counts.skipped_unconvertible += 1
            counts.note(f"{sample.sample_id}: turns do not alternate user/assistant")
            return None
        own = same_format(sample, self.name)
        ids: list[str] = sample.extra.get(INSTRUCTION_IDS, []) if own else []
        if len(ids) != len(pairs):
            ids = [sample.sample_id] + [
                f"{sample.sample_id}_{number}" for number in range(1, len(pairs))
            ]
        image_ids, files = self._images_of(sample, own)
        for position, (image_id, file) in enumerate(zip(image_ids, files, strict=True)):
            if file is None:
                continue
            source = (sample.image_root, file)
            unique, number = image_id, 2
            while image_sources.get(unique, source) != source:  # one id, two different images
                unique, number = f"{image_id}_{number}", number + 1
            image_ids[position] = unique
            image_sources[unique] = source
        related: dict[str, list[str]] = sample.extra.get(REL_INS_IDS, {}) if own else {}
        fields: dict[str, dict[str, Any]] = sample.extra.get(ENTRY_FIELDS, {}) if own else {}
        orders: dict[str, list[str]] = sample.extra.get(ENTRY_KEY_ORDER, {}) if own else {}
        entries: dict[str, Any] = {}
        for instruction_id, (instruction, answer) in zip(ids, pairs, strict=True):
            entry = {
                "instruction": instruction,
                "answer": answer,
                "image_ids": list(image_ids),
                "rel_ins_ids": related.get(
                    instruction_id, [other for other in ids if other != instruction_id]
                ),
                **fields.get(instruction_id, {}),
            }
            entries[instruction_id] = ordered(entry, orders.get(instruction_id))
        counts.samples += 1
        counts.turns += len(sample.turns)
        return entries

    @staticmethod
    def _images_of(sample: Sample, own: bool) -> tuple[list[str], list[str | None]]:
        if own and isinstance(sample.extra.get(IMAGE_IDS), list):
            image_ids = list(sample.extra[IMAGE_IDS])
            files = list(sample.extra.get(IMAGE_FILES) or [None] * len(image_ids))
            if files and sample.image is not None:
                files[0] = sample.image
            return image_ids, files
        references = sample_images(sample)
        if len(references) == 1:
            return [sample.image_id or Path(references[0]).stem], list(references)
        return [Path(reference).stem for reference in references], list(references)

    def _write_images(
        self, path: Path, sources: dict[str, tuple[str, str]], counts: WriteCounts
    ) -> None:
        schema = pa.schema(
            [("base64", pa.string()), ("__index_level_0__", pa.string())],
            metadata={b"pandas": json.dumps(_PANDAS_METADATA).encode()},
        )
        with atomic_output(path, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
            batch_ids: list[str] = []
            batch_data: list[str] = []
            for image_id, (root, reference) in sources.items():
                data = _jpeg_bytes(root, reference, image_id, counts)
                if data is None:
                    continue
                batch_ids.append(image_id)
                batch_data.append(base64.b64encode(data).decode("ascii"))
                counts.images_embedded += 1
                if len(batch_ids) >= _PARQUET_BATCH:
                    writer.write_table(_image_table(batch_data, batch_ids, schema))
                    batch_ids, batch_data = [], []
            writer.write_table(_image_table(batch_data, batch_ids, schema))


_PANDAS_METADATA = {
    "index_columns": ["__index_level_0__"],
    "column_indexes": [
        {
            "name": None,
            "field_name": None,
            "pandas_type": "unicode",
            "numpy_type": "object",
            "metadata": {"encoding": "UTF-8"},
        }
    ],
    "columns": [
        {
            "name": "base64",
            "field_name": "base64",
            "pandas_type": "unicode",
            "numpy_type": "object",
            "metadata": None,
        },
        {
            "name": None,
            "field_name": "__index_level_0__",
            "pandas_type": "unicode",
            "numpy_type": "object",
            "metadata": None,
        },
    ],
    "creator": {"library": "pyarrow", "version": pa.__version__},
    "pandas_version": "2.2.0",
}


def _image_table(data: list[str], ids: list[str], schema: pa.Schema) -> pa.Table:
    return pa.table([pa.array(data, pa.string()), pa.array(ids, pa.string())], schema=schema)


def _jpeg_bytes(root: str, reference: str, image_id: str, counts: WriteCounts) -> bytes | None:
    """The image as JPEG bytes: JPEG files as they are, other images converted."""
    data = read_image_bytes(root, reference, label=f"image {image_id}", counts=counts)
    if data is None:
        return None
    if data.startswith(b"\xff\xd8\xff"):
        return data
    try:
        with open_image(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    except (OSError, ValueError, SyntaxError) as error:
        counts.images_missing += 1
        counts.note(f"image {image_id}: cannot decode {reference} ({error})")
        return None
    counts.images_reencoded += 1
    return buffer.getvalue()


def _pairs(turns: list[Turn]) -> list[tuple[str, str]] | None:
    if len(turns) % 2:
        return None
    pairs = []
    for user, assistant in zip(turns[::2], turns[1::2], strict=True):
        if user.role != "user" or assistant.role != "assistant":
            return None
        pairs.append((user.text, assistant.text))
    return pairs
