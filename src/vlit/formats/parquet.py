"""vlit's samples as a Parquet file that Hugging Face ``datasets`` opens with a real image column.

The ``image`` column is a struct ``{bytes, path}`` holding the encoded image file (as it is on
disk, not re-encoded) and its reference; the Arrow schema's ``huggingface`` metadata declares it
an ``Image`` feature, so ``load_dataset("parquet", data_files=...)`` gives
``features["image"] == Image()`` and PIL images on access. A sample with several images has
them all in ``images`` (a ``Sequence(Image)``; empty for single-image samples), the first also in
``image``. Other columns: ``sample_id``,
``turns`` (list of ``{role, text}``), ``image_id``, ``image_root``, ``mode``, ``provenance`` and
``extra`` (JSON text), ``scores`` (list of ``{name, value}``), ``labels``, ``failure_reason``,
``drop_reason``. A sample whose image is missing gets ``bytes = null`` (counted).

Reading streams record batches; embedded images are written as files under the import's work
folder (the image root of the samples), so every other stage reads them like any image folder.

Example:
    >>> ParquetWriter().write(samples, Path("data.parquet"))                  # doctest: +SKIP
    >>> import datasets
    >>> datasets.load_dataset("parquet", data_files="data.parquet")["train"][0]["image"]
    <PIL.JpegImagePlugin.JpegImageFile image mode=RGB size=640x479 at ...>    # doctest: +SKIP
"""

from __future__ import annotations

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
    ImportContext,
    WriteCounts,
    check_input_file,
    invalid_sample,
    read_image_bytes,
)
from vlit.formats.export_images import sample_images
from vlit.images import resolve_image_path
from vlit.schema import Sample

#: Rows per row group: image rows are large, and readers fetch whole row groups.
ROWS_PER_GROUP = 100
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
#: `datasets` features: ``image`` an ``Image``, ``images`` a ``Sequence(Image)`` (the spelling
#: that `datasets` 2.x to 5.x all read).
_IMAGE_FEATURES = {
    "image": {"_type": "Image"},
    "images": {"_type": "Sequence", "feature": {"_type": "Image"}},
}
PARQUET_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("turns", pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())]))),
        ("image", _IMAGE_TYPE),
        ("images", pa.list_(_IMAGE_TYPE)),
        ("image_id", pa.string()),
        ("image_root", pa.string()),
        ("mode", pa.string()),
        ("provenance", pa.string()),
        ("scores", pa.list_(pa.struct([("name", pa.string()), ("value", pa.float64())]))),
        ("labels", pa.list_(pa.string())),
        ("failure_reason", pa.string()),
        ("drop_reason", pa.string()),
        ("extra", pa.string()),
    ],
    metadata={
        # Only the image column is declared; `datasets` derives the others from the Arrow types,
        # which keeps the file readable across `datasets` versions.
        b"huggingface": json.dumps({"info": {"features": _IMAGE_FEATURES}}).encode(),
        b"vlit": json.dumps({"table": "samples", "version": 1}).encode(),
    },
)
_REQUIRED = ("sample_id", "turns", "image")


class ParquetWriter:
    """Writes samples with embedded image bytes, in row groups of ``rows_per_group``."""

    name: ClassVar[str] = "parquet"

    def __init__(self, *, rows_per_group: int = ROWS_PER_GROUP) -> None:
        self.rows_per_group = rows_per_group

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts:
        counts = WriteCounts(files=[str(path)])
        with atomic_output(path, "wb") as handle, pq.ParquetWriter(handle, PARQUET_SCHEMA) as out:
            rows: list[dict[str, Any]] = []
            for sample in samples:
                rows.append(self.row(sample, counts))
                if len(rows) >= self.rows_per_group:
                    out.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA))
                    rows = []
            out.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA))
        return counts

    def row(self, sample: Sample, counts: WriteCounts) -> dict[str, Any]:
        """One sample as a Parquet row, its image file embedded when it can be read."""
        row = sample.to_row()
        row["scores"] = [{"name": name, "value": value} for name, value in row["scores"]]
        row["image"] = None
        row["images"] = []
        references = sample_images(sample)
        if len(references) == 1:
            row["image"] = {
                "bytes": _image_bytes(sample, references[0], counts),
                "path": references[0],
            }
        elif references:  # every image in `images`; the first also in `image`
            row["images"] = [
                {"bytes": _image_bytes(sample, reference, counts), "path": reference}
                for reference in references
            ]
            row["image"] = row["images"][0]
        counts.samples += 1
        counts.turns += len(sample.turns)
        return row


def _image_bytes(sample: Sample, reference: str, counts: WriteCounts) -> bytes | None:
    data = read_image_bytes(sample.image_root, reference, label=sample.sample_id, counts=counts)
    if data is not None:
        counts.images_embedded += 1
    return data


class ParquetReader:
    """Reads vlit's Parquet samples, streaming, unpacking embedded images into files.

    Samples whose image was not embedded take ``--images`` (default: the file's folder) as image
    root; a row's own ``image_root`` is not trusted.
    """

    name: ClassVar[str] = "parquet"

    def __init__(self, *, batch_size: int = 256) -> None:
        self.batch_size = batch_size
        self.counts: Counter[str] = Counter()

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]:
        check_input_file(path)
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise InputFileError(
                f"not a readable Parquet file ({error})",
                file=str(path),
                fix="re-export it, or pass the right --format",
            ) from error
        missing = [name for name in _REQUIRED if name not in parquet.schema_arrow.names]
        if missing:
            raise InputFileError(
                f"not a vlit samples Parquet (no column {', '.join(missing)})",
                file=str(path),
                fix="export it with `vlit export --format parquet`, or pass the right --format",
            )
        root = context.image_root(path.parent)  # never a row's own image_root (see JsonlReader)
        workdir = context.workdir.resolve()
        index = 0
        for batch in parquet.iter_batches(batch_size=self.batch_size):
            for row in batch.to_pylist():
                yield self._sample(row, index, path, workdir, root)
                index += 1

    def _sample(
        self, row: dict[str, Any], index: int, path: Path, workdir: Path, root: str
    ) -> Sample:
        image = row.get("image") or {}
        more = [item for item in row.get("images") or [] if item]
        row = {**row, "image": image.get("path")}
        row["scores"] = [(item["name"], item["value"]) for item in row.get("scores") or []]
        try:
            if row.get("sample_id") is None:
                raise RecordError("`sample_id` is null")
            sample = Sample.from_row(row)
        except (RecordError, KeyError, TypeError, ValueError) as problem:
            return invalid_sample(
                record=None,
                index=index,
                problem=getattr(problem, "problem", str(problem)),
                source_format=self.name,
                file=path,
                sample_id=f"{path.stem}-{index:06d}",
            )
        data = image.get("bytes")
        if data is not None and sample.image is not None:
            sample.image_root = str(workdir)
            self._unpack(data, sample.image, workdir)
            for item in more[1:]:
                if item.get("bytes") is not None and item.get("path"):
                    self._unpack(item["bytes"], item["path"], workdir)
        else:
            sample.image_root = root if sample.image is not None else ""
        return sample

    def _unpack(self, data: bytes, reference: str, workdir: Path) -> None:
        try:
            target = resolve_image_path(workdir, reference)
        except RecordError:
            return  # the importer's check records the escape on the sample
        if target.exists() and target.stat().st_size == len(data):
            return
        write_bytes_atomic(target, data)
        self.counts["images_unpacked"] += 1
