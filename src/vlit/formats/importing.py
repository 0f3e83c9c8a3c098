"""Import and export with every image reference checked and every problem counted.

`DatasetImporter` wraps a format reader: for each sample it resolves the image inside the image
root (an escape is a failure), checks that the file exists (a missing image is *not* a
failure: quality control can still use the text; it is recorded in
``provenance["image_status"]`` and counted) and, with ``verify_images``, that it decodes. An
image root on object storage (``s3://...``) is listed once through fsspec and each reference
looked up in the listing (one request per thousand objects, not one per image). The counts are
the summary of `vlit import`. `export_samples` writes samples with a format writer,
leaving out failed samples unless asked.

Example:
    >>> importer = DatasetImporter(
    ...     reader=LlavaReader(), images=Path("coco"), workdir=Path("run/images/llava")
    ... )
    >>> samples = importer.samples(Path("llava.json"))
    >>> RunDir("run").write_samples("samples", samples)  # doctest: +SKIP
    >>> importer.summary()["images_missing"]             # doctest: +SKIP
    0
"""

from __future__ import annotations

import itertools
import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlit.errors import ConfigError, InputFileError, RecordError, VlitError
from vlit.formats.base import RAW_RECORD, FormatReader, FormatWriter, ImportContext
from vlit.formats.export_images import ExportImages
from vlit.formats.image_token import IMAGE_TOKEN_KEY
from vlit.formats.sniff import classify_record
from vlit.images import check_image, is_url, reference_problem, resolve_image_path
from vlit.reasons import (
    IMAGE_PATH_ESCAPES,
    IMAGE_UNREADABLE,
    INVALID_RECORD,
    Reason,
    with_problem,
)
from vlit.schema import Sample
from vlit.storage import find_objects

IMAGE_STATUS = "image_status"
_VERIFY_CHUNK = 64


@dataclass
class ImportCounts:
    """What an import found. Failures: invalid records, path escapes, unreadable images."""

    samples: int = 0
    turns: int = 0
    samples_failed: int = 0
    records_invalid: int = 0
    text_only: int = 0
    images_present: int = 0
    images_verified: int = 0
    images_missing: int = 0
    images_unreadable: int = 0
    path_escapes: int = 0
    duplicate_ids: int = 0
    image_token_placement: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def note(self, sample: Sample, problem: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(f"{sample.sample_id}: {problem}")


class DatasetImporter:
    """Reads one dataset file with ``reader`` and checks the image of every sample.

    ``images`` is the image folder or its URL (for MIMIC-IT: the images Parquet); ``workdir``
    receives images that arrive encoded inside the input (MIMIC-IT, Parquet).
    ``verify_images`` decodes each image header (threads: ``workers``); without it only
    existence is checked, which is what keeps a 150K-record import fast.
    """

    def __init__(
        self,
        *,
        reader: FormatReader,
        images: Path | str | None,
        workdir: Path,
        verify_images: bool = False,
        workers: int = 4,
    ) -> None:
        self.reader = reader
        self.context = ImportContext(images=images, workdir=workdir)
        self.verify_images = verify_images
        self.workers = workers
        self.counts = ImportCounts()
        self._seen_ids: set[str] = set()
        self._listings: dict[str, dict[str, int]] = {}

    def samples(self, path: Path) -> Iterator[Sample]:
        """The samples of ``path``, checked and counted as they stream by.

        A file without one record, or whose every record is invalid, ends the stream with an
        `InputFileError` (so a run directory never receives a file vlit could not read).
        """
        yield from self._checked_samples(path)
        counts = self.counts
        if counts.samples == 0:
            raise InputFileError(
                "the file has no record",
                file=str(path),
                fix=_format_fix(path, self.reader.name, self.context),
            )
        if counts.records_invalid == counts.samples:
            first = counts.examples[0] if counts.examples else "invalid record"
            raise InputFileError(
                f"none of its {counts.samples} records can be read as {self.reader.name} data "
                f"(first: {first})",
                file=str(path),
                fix=_format_fix(path, self.reader.name, self.context),
            )

    def _checked_samples(self, path: Path) -> Iterator[Sample]:
        stream = self._checked_start(self.reader.read(path, self.context), path)
        if not self.verify_images:
            for sample in stream:
                self._inspect(sample)
                self._count(sample)
                yield sample
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            while chunk := list(itertools.islice(stream, _VERIFY_CHUNK)):
                located = [self._inspect(sample) for sample in chunk]
                reasons = pool.map(_verify, located)
                for sample, path_to_check, reason in zip(chunk, located, reasons, strict=True):
                    if path_to_check is not None:
                        self._record_verification(sample, path_to_check, reason)
                    self._count(sample)
                    yield sample

    def _checked_start(self, stream: Iterator[Sample], path: Path) -> Iterator[Sample]:
        """The stream, after making sure its first record is not plainly another format.

        A wrong ``--format`` would otherwise turn every record into an invalid sample.
        """
        first = next(stream, None)
        if first is None:
            return
        raw = first.extra.get(RAW_RECORD)
        looks_like = classify_record(raw) if RAW_RECORD in first.extra else None
        if looks_like is not None and looks_like != self.reader.name:
            raise InputFileError(
                f"the first record looks like {looks_like} data, not {self.reader.name}",
                file=str(path),
                fix=f"pass --format {looks_like} (or --format auto)",
            )
        yield first
        yield from stream

    def summary(self) -> dict[str, Any]:
        """The counts as a plain dict (reader-specific counts included)."""
        result = asdict(self.counts)
        result["image_token_placement"] = dict(self.counts.image_token_placement)
        result.update(self.reader.counts)
        return result

    def _inspect(self, sample: Sample) -> Path | None:
        """Resolve and stat the image; the path if it still needs verifying."""
        if RAW_RECORD in sample.extra:
            return None
        if sample.image is None:
            sample.provenance[IMAGE_STATUS] = "none"
            return None
        if is_url(sample.image_root):
            self._inspect_remote(sample, sample.image)
            return None
        try:
            path = resolve_image_path(sample.image_root, sample.image)
        except RecordError as problem:
            self._fail(sample, Reason(IMAGE_PATH_ESCAPES, problem.problem), status="escapes")
            self.counts.path_escapes += 1
            return None
        try:
            info = os.stat(path)
        except OSError:
            sample.provenance[IMAGE_STATUS] = "missing"
            self.counts.images_missing += 1
            self.counts.note(sample, f"image {sample.image} not found")
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            kind = "empty" if stat.S_ISREG(info.st_mode) else "not a regular file"
            self._fail(sample, Reason(IMAGE_UNREADABLE, f"{path} is {kind}"), status="unreadable")
            self.counts.images_unreadable += 1
            return None
        sample.provenance[IMAGE_STATUS] = "present"
        return path if self.verify_images else None

    def _inspect_remote(self, sample: Sample, reference: str) -> None:
        """Check an image under a URL root against that root's listing."""
        if reference_problem(reference) is not None:
            problem = Reason(
                IMAGE_PATH_ESCAPES, f"image path escapes the image root: {reference!r}"
            )
            self._fail(sample, problem, status="escapes")
            self.counts.path_escapes += 1
            return
        root = sample.image_root
        if root not in self._listings:
            self._listings[root] = list_objects(root)
        size = self._listings[root].get(posixpath.normpath(reference.replace("\\", "/")))
        if size is None:
            sample.provenance[IMAGE_STATUS] = "missing"
            self.counts.images_missing += 1
            self.counts.note(sample, f"image {reference} not found under {root}")
        elif size == 0:
            unreadable = Reason(IMAGE_UNREADABLE, f"{root}/{reference} is empty")
            self._fail(sample, unreadable, status="unreadable")
            self.counts.images_unreadable += 1
        else:
            sample.provenance[IMAGE_STATUS] = "present"

    def _record_verification(self, sample: Sample, path: Path, reason: str | None) -> None:
        if reason is None:
            sample.provenance[IMAGE_STATUS] = "verified"
            self.counts.images_verified += 1
            return
        self._fail(sample, Reason(IMAGE_UNREADABLE, f"{reason} ({path})"), status="unreadable")
        self.counts.images_unreadable += 1

    def _fail(self, sample: Sample, reason: Reason, *, status: str) -> None:
        sample.provenance[IMAGE_STATUS] = status
        sample.failure_reason = with_problem(sample.failure_reason, reason)
        self.counts.note(sample, str(reason))

    def _count(self, sample: Sample) -> None:
        counts = self.counts
        counts.samples += 1
        counts.turns += len(sample.turns)
        if RAW_RECORD in sample.extra:
            counts.records_invalid += 1
            counts.note(sample, str(sample.failure_reason or INVALID_RECORD))
        if sample.failure_reason is not None:
            counts.samples_failed += 1
        if sample.image is None and RAW_RECORD not in sample.extra:
            counts.text_only += 1
        else:
            counts.images_present += sample.provenance.get(IMAGE_STATUS) in ("present", "verified")
        token = sample.extra.get(IMAGE_TOKEN_KEY)
        if isinstance(token, dict):
            counts.image_token_placement[str(token.get("placement"))] += 1
        if sample.sample_id in self._seen_ids:
            counts.duplicate_ids += 1
        else:
            self._seen_ids.add(sample.sample_id)


def _format_fix(path: Path, tried: str, context: ImportContext) -> str:
    """The ``--format`` that reads ``path`` (the first of ours whose first records parse)."""
    from vlit.formats import FORMATS  # the registry imports this module

    for name, (reader_class, _) in FORMATS.items():
        if name == tried:
            continue
        try:
            head = list(itertools.islice(reader_class().read(path, context), 5))
        except (VlitError, OSError, ValueError):
            continue
        if any(RAW_RECORD not in sample.extra for sample in head):
            return f"pass --format {name}"
    return (
        f"it is not in any of vlit's formats ({', '.join(FORMATS)}): convert it, pass the right "
        "--format, or collect annotation files (COCO, VQA) with `vlit collect coco`"
    )


def _verify(path: Path | None) -> str | None:
    return None if path is None else check_image(path)


def list_objects(root: str) -> dict[str, int]:
    """Every object under the URL ``root``: path relative to it -> size in bytes."""
    found = find_objects(root, what="the image root")
    return {relative: int(info.get("size") or 0) for relative, info in found.items()}


def export_samples(
    samples: Iterable[Sample],
    path: Path,
    *,
    writer: FormatWriter,
    include_failed: bool = False,
    images: ExportImages | None = None,
) -> dict[str, Any]:
    """Write ``samples`` to ``path``; failed samples are left out (and counted) unless
    ``include_failed``. ``images`` checks, gathers and rewrites the image references (default:
    one image root, no missing image; see `vlit.formats.export_images`); when it refuses the
    export (missing images, unsupported samples) nothing is written. Returns the counts."""
    images = images if images is not None else ExportImages(format_name=writer.name)
    skipped = Counter[str]()

    def wanted() -> Iterator[Sample]:
        for sample in samples:
            if sample.failure_reason is not None and not include_failed:
                skipped["skipped_failed"] += 1
                continue
            skipped[f"root:{sample.image_root}"] += sample.image is not None
            prepared = images.prepare(sample)
            if prepared is not None:
                yield prepared
        images.finish()  # raising here stops the writer before it commits its file

    counts = writer.write(wanted(), path)
    summary = asdict(counts)
    summary["skipped_failed"] = skipped["skipped_failed"]
    summary["image_roots"] = sum(
        1 for key, value in skipped.items() if key.startswith("root:") and value
    )
    summary.update(images.summary())
    summary["images_missing"] += summary.pop("images_missing_at_export")
    return summary


def check_format_name(name: str, choices: Iterable[str]) -> str:
    """``name`` if it is one of ``choices``, else a `ConfigError` listing them."""
    options = list(choices)
    if name not in options:
        raise ConfigError(f"unknown format {name!r}", fix=f"use one of: {', '.join(options)}")
    return name
