"""Your own images: one JSON object per line, with the fields of a COCO-style record.

Each non-blank line describes one image (full description: ``docs/collect_jsonl.md``)::

    {"image_id": "kitchen-001",            # string or integer, unique in the file
     "file_name": "kitchen/001.jpg",       # relative to --images; must stay inside it
     "width": 640, "height": 480,          # optional: read from the image when absent
     "captions": ["Two bottles on a table."],
     "objects": [{"category": "bottle", "supercategory": "kitchen",
                  "bbox": [12, 40, 30, 90],           # [x, y, width, height] in pixels
                  "iscrowd": false, "attributes": ["green", "glass"]}],
     "ocr": [{"text": "BARDOLINO", "bbox": [20, 60, 25, 8], "legible": true}],
     "vqa": [{"question": "How many bottles are there?", "answers": ["2", "two", "2"],
              "majority_answer": "2"}]}

Only ``image_id`` and ``file_name`` are required; every list may be missing or empty (an
empty ``objects`` list says no object of the categories is there; a missing one, unknown). Within
``objects`` only ``category`` is required (``annotation_id`` and ``area`` are also read); in
``ocr`` only ``text``; a ``vqa`` entry needs ``question`` and ``answers`` or
``majority_answer`` (the majority is computed from ``answers`` when absent).

A line that is not JSON or has a field of the wrong type is skipped and counted, with its line
number in ``skipped_lines``; a ``file_name`` that is absolute or climbs out of the image folder
(``../../etc/passwd``) is refused for that line. Nothing on one line stops the others.
Fields vlit does not read are ignored and listed, with how many lines had them, in
``unknown_fields`` (a typo such as ``"caption"`` shows up there).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from vlit.collect._io import (
    PROGRESS_EVERY,
    FieldChecker,
    ProgressCallback,
    escapes_root,
    normalise_text,
    type_name,
)
from vlit.collect.common import (
    RECORD_COUNTERS,
    CollectResult,
    check_image_files,
    check_image_folder,
    finish_counts,
    image_folder,
)
from vlit.collect.vqa import majority_answer
from vlit.errors import InputFileError
from vlit.jsonio import loads_json
from vlit.schema import ImageRecord, ObjectAnnotation, OcrText, VqaPair

#: Every counter of a JSONL collection summary, always present.
JSONL_COUNTERS = (
    "lines",
    *RECORD_COUNTERS,
    "lines_skipped",
    "lines_invalid_json",
    "lines_wrong_types",
    "images_path_escaping_root",
    "duplicate_image_ids",
    "captions_whitespace_fixed",
    "captions_empty",
    "crowd_annotations",
    "objects_degenerate_box",
    "images_without_objects",
    "images_without_captions",
    "images_missing_file",
    "images_unreadable",
    "images_size_mismatch",
)

#: At most this many skipped lines are listed (with line number and reason) in the summary.
MAX_LISTED_SKIPS = 100

_FIELDS = {"image_id", "file_name", "width", "height", "captions", "objects", "ocr", "vqa"}


class _SkipLine(Exception):
    """This line is refused; ``counter`` says why."""

    def __init__(self, counter: str, reason: str) -> None:
        super().__init__(reason)
        self.counter = counter
        self.reason = reason


class JsonlCollector:
    """Read a JSONL file of your own image annotations into `ImageRecord`s (``images_dir`` may
    be a URL on object storage).

    Example:
        >>> result = JsonlCollector(jsonl_file="mine.jsonl", images_dir="photos").collect()
        ... # doctest: +SKIP
        >>> result.summary["lines_skipped"]   # doctest: +SKIP
        0
    """

    def __init__(
        self,
        *,
        jsonl_file: str | os.PathLike[str],
        images_dir: str | os.PathLike[str],
        check_images: bool = True,
    ) -> None:
        self.jsonl_file = Path(jsonl_file)
        self.images_dir = image_folder(images_dir)
        self.check_images = check_images

    def collect(self, on_progress: ProgressCallback | None = None) -> CollectResult:
        """Read every line, keep the good ones, check the image files; return records and counts."""
        if not self.jsonl_file.is_file():
            raise InputFileError(
                "JSONL file not found" if not self.jsonl_file.exists() else "not a file",
                file=str(self.jsonl_file),
                fix="check the path of the JSONL file",
            )
        check_image_folder(self.images_dir)
        counts: Counter[str] = Counter({key: 0 for key in JSONL_COUNTERS})
        skipped: list[dict[str, Any]] = []
        unknown_fields: Counter[str] = Counter()
        records: dict[str, ImageRecord] = {}
        step = "reading JSONL lines"
        with self.jsonl_file.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                counts["lines"] += 1
                try:
                    record = self._parse_line(raw, number, counts, unknown_fields)
                    if record.image_id in records:
                        raise _SkipLine(
                            "duplicate_image_ids",
                            f"image_id {record.image_id!r} already appeared; first kept",
                        )
                except _SkipLine as skip:
                    counts[skip.counter] += 1
                    counts["lines_skipped"] += 1
                    if len(skipped) < MAX_LISTED_SKIPS:
                        skipped.append({"line": number, "reason": skip.reason})
                else:
                    records[record.image_id] = record
                if on_progress is not None and counts["lines"] % PROGRESS_EVERY == 0:
                    on_progress(step, counts["lines"], None)
        if on_progress is not None:
            on_progress(step, counts["lines"], counts["lines"])
        if not records:
            self._raise_nothing_usable(counts["lines"], skipped)
        record_list = list(records.values())
        if self.check_images:
            check_image_files(record_list, counts, on_progress)
        counts["images_without_objects"] = sum(1 for r in record_list if not r.objects)
        counts["images_without_captions"] = sum(1 for r in record_list if not r.captions)
        finish_counts(record_list, counts)
        summary: dict[str, Any] = {
            "images_dir": self.images_dir,
            "sources": {"jsonl": str(self.jsonl_file)},
        }
        summary.update({key: counts[key] for key in JSONL_COUNTERS})
        summary["skipped_lines"] = skipped
        # Fields vlit does not read (a typo such as "caption" shows up here), with line counts.
        summary["unknown_fields"] = dict(sorted(unknown_fields.items()))
        return CollectResult(records=record_list, summary=summary)

    def _raise_nothing_usable(self, lines: int, skipped: list[dict[str, Any]]) -> None:
        """Stop: a file without one usable line is a wrong file, not an empty dataset."""
        fix = "write one JSON object per line, as docs/collect_jsonl.md shows"
        if lines == 0:
            raise InputFileError("the JSONL file has no line", file=str(self.jsonl_file), fix=fix)
        with self.jsonl_file.open("rb") as handle:
            start = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if start.startswith(b"[") and "nested" not in skipped[0]["reason"]:
            problem = "the file is a JSON array, not JSON lines (one object per line)"
        else:
            first = skipped[0]
            problem = (
                f"no usable line: all {lines} lines were skipped "
                f"(line {first['line']}: {first['reason']})"
            )
        raise InputFileError(problem, file=str(self.jsonl_file), fix=fix)

    def _parse_line(
        self, raw: bytes, number: int, counts: Counter[str], unknown_fields: Counter[str]
    ) -> ImageRecord:
        try:
            data = loads_json(raw, file=self.jsonl_file, what="JSONL", record=f"line {number}")
        except InputFileError as error:
            raise _SkipLine("lines_invalid_json", error.problem) from error
        check = FieldChecker(self.jsonl_file, what="JSONL")
        line = f"line {number}"
        try:
            item = check.item(data, line)
            record = self._record(item, check, line)
        except InputFileError as error:
            where = str(error.record or "").removeprefix(line).strip()  # e.g. "objects[0]"
            reason = f"{where}: {error.problem}" if where else error.problem
            raise _SkipLine("lines_wrong_types", reason) from error
        unknown_fields.update(set(item) - _FIELDS)
        if escapes_root(record.file_name):
            raise _SkipLine(
                "images_path_escaping_root",
                f"file_name {record.file_name!r} is absolute or leaves the image folder",
            )
        for caption in item.get("captions") or []:
            text = normalise_text(caption)
            if not text:
                counts["captions_empty"] += 1
                record.problems.append("empty_caption: an empty caption was dropped")
                continue
            if text != caption:
                counts["captions_whitespace_fixed"] += 1
            record.captions.append(text)
        for obj in record.objects:
            if obj.iscrowd:
                counts["crowd_annotations"] += 1
            if obj.bbox is not None and (obj.bbox[2] <= 0 or obj.bbox[3] <= 0):
                counts["objects_degenerate_box"] += 1
                record.problems.append(
                    f"degenerate_box: {obj.category} has box {obj.bbox}; kept without it"
                )
                obj.bbox = None
        return record

    def _record(self, item: dict[str, Any], check: FieldChecker, line: str) -> ImageRecord:
        image_id = check.image_id(item, line)
        check.strings(item, "captions", line)  # type check; normalised by the caller
        return ImageRecord(
            image_id=image_id,
            file_name=check.string(item, "file_name", line),
            image_root=self.images_dir,
            width=check.optional_integer(item, "width", line),
            height=check.optional_integer(item, "height", line),
            objects=[
                self._object(check.item(obj, f"{line} objects[{i}]"), check, f"{line} objects[{i}]")
                for i, obj in enumerate(_list(item, "objects", check, line))
            ],
            ocr=[
                self._ocr(check.item(text, f"{line} ocr[{i}]"), check, f"{line} ocr[{i}]")
                for i, text in enumerate(_list(item, "ocr", check, line))
            ],
            vqa=[
                self._vqa(check.item(pair, f"{line} vqa[{i}]"), check, f"{line} vqa[{i}]")
                for i, pair in enumerate(_list(item, "vqa", check, line))
            ],
            source="jsonl",
            objects_annotated="objects" in item,  # "objects": [] says none is there
        )

    @staticmethod
    def _object(item: dict[str, Any], check: FieldChecker, where: str) -> ObjectAnnotation:
        iscrowd = item.get("iscrowd", False)
        if not isinstance(iscrowd, bool) and iscrowd not in (0, 1):
            raise check.fail(where, f"'iscrowd' should be true/false, got {type_name(iscrowd)}")
        return ObjectAnnotation(
            category=normalise_text(check.string(item, "category", where)),
            supercategory=normalise_text(check.optional_string(item, "supercategory", where) or ""),
            bbox=check.bbox(item, where),
            iscrowd=bool(iscrowd),
            attributes=[
                word
                for word in map(normalise_text, check.strings(item, "attributes", where))
                if word
            ],
            annotation_id=check.optional_integer(item, "annotation_id", where),
            area=check.number(item, "area", where),
        )

    @staticmethod
    def _ocr(item: dict[str, Any], check: FieldChecker, where: str) -> OcrText:
        legible = item.get("legible", True)
        if not isinstance(legible, bool):
            raise check.fail(where, f"'legible' should be true/false, got {type_name(legible)}")
        return OcrText(
            text=normalise_text(check.string(item, "text", where)),
            bbox=check.bbox(item, where),
            legible=legible,
        )

    @staticmethod
    def _vqa(item: dict[str, Any], check: FieldChecker, where: str) -> VqaPair:
        answers = [normalise_text(a) for a in check.strings(item, "answers", where)]
        given = check.optional_string(item, "majority_answer", where)
        if not answers and not given:
            raise check.fail(where, "a vqa entry needs 'answers' or 'majority_answer'")
        return VqaPair(
            question=normalise_text(check.string(item, "question", where)),
            answers=answers,
            majority_answer=normalise_text(given) if given else majority_answer(answers),
            question_id=check.optional_integer(item, "question_id", where),
            answer_type=check.optional_string(item, "answer_type", where),
        )


def _list(item: dict[str, Any], key: str, check: FieldChecker, where: str) -> list[Any]:
    value = item.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise check.fail(where, f"'{key}' should be a list, got {type_name(value)}")
    return value
