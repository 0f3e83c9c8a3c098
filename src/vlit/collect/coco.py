"""COCO-style collection: captions, instances, VQA v2, COCO-Text and attributes per image id.

The images are those listed in the ``images`` arrays of the captions and instances files
(their union, in file order). Every other source is joined to them by image id; what does not
fit is counted, never a crash:

=====================================  =========================================================
hole in the data                       what happens (summary counter)
=====================================  =========================================================
image listed twice in one file         first kept (``duplicate_image_ids``)
image listed differently in the two    first kept, noted on the record
files                                  (``images_conflicting_entries``)
file name outside the image folder     image skipped (``images_path_escaping_root``); its
                                       annotations then count as for an unlisted image
annotation id used twice               first kept (``duplicate_annotation_ids``)
annotation for an image not listed     skipped (``annotations_for_unlisted_images``)
caption with stray whitespace          normalised (``captions_whitespace_fixed``)
caption empty after normalising        skipped, noted (``captions_empty``)
crowd annotation (``iscrowd=1``, RLE)  kept with ``iscrowd=True`` (``crowd_annotations``)
box with zero width or height          object kept without a box, noted
                                       (``objects_degenerate_box``)
unknown ``category_id``                object skipped, noted (``objects_unknown_category``)
image without boxes / captions         kept (``images_without_objects`` / ``_captions``)
image file missing / unreadable        kept, noted (``images_missing_file`` /
                                       ``images_unreadable``)
=====================================  =========================================================

A file that cannot be used at all (missing, truncated, not JSON, a field of the wrong type)
raises `InputFileError` naming the file, the record and the fix.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlit.collect._io import (
    FieldChecker,
    ProgressCallback,
    escapes_root,
    load_json_file,
    normalise_text,
)
from vlit.collect.attributes import attach_attributes, load_attributes
from vlit.collect.coco_text import load_coco_text
from vlit.collect.common import (
    RECORD_COUNTERS,
    CollectResult,
    check_image_files,
    check_image_folder,
    finish_counts,
    image_folder,
)
from vlit.collect.vqa import load_vqa
from vlit.errors import ConfigError
from vlit.schema import ImageRecord, ObjectAnnotation

#: Every counter of a COCO collection summary, always present (0 when nothing happened).
COCO_COUNTERS = (
    *RECORD_COUNTERS,
    "duplicate_image_ids",
    "images_conflicting_entries",
    "images_path_escaping_root",
    "duplicate_annotation_ids",
    "annotations_for_unlisted_images",
    "captions_for_unlisted_images",
    "objects_for_unlisted_images",
    "captions_whitespace_fixed",
    "captions_empty",
    "crowd_annotations",
    "objects_degenerate_box",
    "objects_unknown_category",
    "images_without_objects",
    "images_without_captions",
    "images_missing_file",
    "images_unreadable",
    "images_size_mismatch",
    "vqa_for_unlisted_images",
    "vqa_questions_without_answers",
    "vqa_answers_without_question",
    "vqa_duplicate_question_ids",
    "vqa_duplicate_annotation_question_ids",
    "vqa_image_id_mismatch",
    "ocr_for_unlisted_images",
    "ocr_illegible",
    "ocr_empty_text",
    "ocr_duplicates",
    "attributes_for_unknown_annotations",
    "attributes_for_unlisted_images",
    "attributes_unmatched_regions",
)


@dataclass
class _ListedImage:
    file_name: str
    width: int | None
    height: int | None
    problems: list[str] = field(default_factory=list)


class CocoCollector:
    """Join COCO-style annotation files per image id into `ImageRecord`s.

    Only ``captions`` is required; every other source is optional. Paths may be strings or
    ``Path``s, ``images_dir`` also a URL on object storage (``s3://bucket/train2017``, read
    through fsspec); nothing is read before `collect`.

    Example:
        >>> collector = CocoCollector(
        ...     images_dir="coco/train2017",
        ...     captions="coco/annotations/captions_train2017.json",
        ...     instances="coco/annotations/instances_train2017.json",
        ... )
        >>> result = collector.collect()         # doctest: +SKIP
        >>> result.summary["images"], result.records[0].objects[0].category  # doctest: +SKIP
        (50, 'motorcycle')
    """

    def __init__(
        self,
        *,
        images_dir: str | os.PathLike[str],
        captions: str | os.PathLike[str],
        instances: str | os.PathLike[str] | None = None,
        vqa_questions: str | os.PathLike[str] | None = None,
        vqa_annotations: str | os.PathLike[str] | None = None,
        coco_text: str | os.PathLike[str] | None = None,
        attributes: str | os.PathLike[str] | None = None,
        check_images: bool = True,
    ) -> None:
        if (vqa_questions is None) != (vqa_annotations is None):
            raise ConfigError(
                "VQA v2 needs both its questions file and its annotations file",
                fix="pass both --vqa-questions and --vqa-annotations, or neither",
            )
        self.images_dir = image_folder(images_dir)
        self.captions = Path(captions)
        self.instances = Path(instances) if instances is not None else None
        self.vqa_questions = Path(vqa_questions) if vqa_questions is not None else None
        self.vqa_annotations = Path(vqa_annotations) if vqa_annotations is not None else None
        self.coco_text = Path(coco_text) if coco_text is not None else None
        self.attributes = Path(attributes) if attributes is not None else None
        self.check_images = check_images

    def collect(self, on_progress: ProgressCallback | None = None) -> CollectResult:
        """Read every source, join per image, check image files; return records and counts."""
        check_image_folder(self.images_dir)
        counts: Counter[str] = Counter({key: 0 for key in COCO_COUNTERS})
        sources = [("captions", self.captions), ("instances", self.instances)]
        extra = [
            ("VQA v2", self.vqa_questions),
            ("COCO-Text", self.coco_text),
            ("attributes", self.attributes),
        ]
        total_steps = sum(1 for _, path in sources + extra if path is not None)
        step = "reading annotation files"
        done_steps = 0

        def advance() -> None:
            nonlocal done_steps
            done_steps += 1
            if on_progress is not None:
                on_progress(step, done_steps, total_steps)

        if on_progress is not None:
            on_progress(step, 0, total_steps)
        captions_data = self._load_coco(self.captions, "COCO captions", ("images", "annotations"))
        advance()
        instances_data = None
        if self.instances is not None:
            instances_data = self._load_coco(
                self.instances, "COCO instances", ("images", "annotations", "categories")
            )
            advance()

        listed: dict[str, _ListedImage] = {}
        self._list_images(self.captions, "COCO captions", captions_data, listed, counts)
        if self.instances is not None and instances_data is not None:
            self._list_images(self.instances, "COCO instances", instances_data, listed, counts)
        records = {
            image_id: ImageRecord(
                image_id=image_id,
                file_name=entry.file_name,
                image_root=self.images_dir,
                width=entry.width,
                height=entry.height,
                source="coco",
                problems=list(entry.problems),
            )
            for image_id, entry in listed.items()
        }
        self._add_captions(captions_data, records, counts)
        if self.instances is not None and instances_data is not None:
            self._add_objects(self.instances, instances_data, records, counts)
            for image_id in self._image_ids(instances_data):
                if image_id in records:
                    records[image_id].objects_annotated = True
            counts["images_without_objects"] = sum(1 for r in records.values() if not r.objects)
        counts["images_without_captions"] = sum(1 for r in records.values() if not r.captions)

        if self.vqa_questions is not None and self.vqa_annotations is not None:
            vqa = load_vqa(self.vqa_questions, self.vqa_annotations, counts)
            for image_id, pairs in vqa.items():
                if image_id in records:
                    records[image_id].vqa.extend(pairs)
                else:
                    counts["vqa_for_unlisted_images"] += len(pairs)
            advance()
        if self.coco_text is not None:
            for image_id, texts in load_coco_text(self.coco_text, counts).items():
                if image_id in records:
                    records[image_id].ocr.extend(texts)
                else:
                    counts["ocr_for_unlisted_images"] += len(texts)
            advance()
        record_list = list(records.values())
        if self.attributes is not None:
            attach_attributes(record_list, load_attributes(self.attributes), counts)
            advance()
        if self.check_images:
            check_image_files(record_list, counts, on_progress)
        counts["annotations_for_unlisted_images"] = (
            counts["captions_for_unlisted_images"] + counts["objects_for_unlisted_images"]
        )
        finish_counts(record_list, counts)
        summary: dict[str, Any] = {
            "images_dir": self.images_dir,
            "sources": {
                name: str(path)
                for name, path in (
                    ("captions", self.captions),
                    ("instances", self.instances),
                    ("vqa_questions", self.vqa_questions),
                    ("vqa_annotations", self.vqa_annotations),
                    ("coco_text", self.coco_text),
                    ("attributes", self.attributes),
                )
                if path is not None
            },
        }
        summary.update({key: counts[key] for key in COCO_COUNTERS})
        summary.update({key: value for key, value in sorted(counts.items()) if key not in summary})
        return CollectResult(records=record_list, summary=summary)

    # -- steps -------------------------------------------------------------------------------
    @staticmethod
    def _load_coco(path: Path, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
        check = FieldChecker(path, what=what)
        data = check.top_object(load_json_file(path, what=what), keys)
        for key in keys:
            check.list_at(data, key)
        return data

    @staticmethod
    def _image_ids(data: dict[str, Any]) -> set[str]:
        """The ids of an annotation file's ``images`` array (already checked by _list_images)."""
        return {
            str(item["id"]) for item in data["images"] if isinstance(item, dict) and "id" in item
        }

    def _list_images(
        self,
        path: Path,
        what: str,
        data: dict[str, Any],
        listed: dict[str, _ListedImage],
        counts: Counter[str],
    ) -> None:
        check = FieldChecker(path, what=what)
        seen_here: set[str] = set()
        for index, raw in enumerate(data["images"]):
            record = f"images[{index}]"
            item = check.item(raw, record)
            image_id = check.image_id(item, record, key="id")
            record = f"images[{index}] (id {image_id})"
            file_name = check.string(item, "file_name", record)
            width = check.optional_integer(item, "width", record)
            height = check.optional_integer(item, "height", record)
            if image_id in seen_here:
                counts["duplicate_image_ids"] += 1
                continue
            seen_here.add(image_id)
            if escapes_root(file_name):
                counts["images_path_escaping_root"] += 1
                continue
            known = listed.get(image_id)
            if known is None:
                listed[image_id] = _ListedImage(file_name, width, height)
            elif known.file_name == file_name and (known.width, known.height) == (None, None):
                known.width, known.height = width, height  # one file omits the size: no conflict
            elif known.file_name != file_name or (
                (width, height) != (None, None) and (width, height) != (known.width, known.height)
            ):
                counts["images_conflicting_entries"] += 1
                known.problems.append(
                    f"conflicting_entries: {path.name} lists this id as {file_name} "
                    f"({width}x{height}); kept {known.file_name} ({known.width}x{known.height})"
                )

    def _add_captions(
        self, data: dict[str, Any], records: dict[str, ImageRecord], counts: Counter[str]
    ) -> None:
        check = FieldChecker(self.captions, what="COCO captions")
        seen_ids: set[int] = set()
        for index, raw in enumerate(data["annotations"]):
            item, record, annotation_id, image_id = _annotation_head(check, raw, index)
            caption = check.string(item, "caption", record)
            target = _annotation_target(
                annotation_id,
                image_id,
                seen_ids,
                records,
                counts,
                unlisted="captions_for_unlisted_images",
            )
            if target is None:
                continue
            text = normalise_text(caption)
            if not text:
                counts["captions_empty"] += 1
                target.problems.append(f"empty_caption: caption id {annotation_id} is empty")
                continue
            if text != caption:
                counts["captions_whitespace_fixed"] += 1
            target.captions.append(text)

    @staticmethod
    def _add_objects(
        path: Path, data: dict[str, Any], records: dict[str, ImageRecord], counts: Counter[str]
    ) -> None:
        check = FieldChecker(path, what="COCO instances")
        categories: dict[int, tuple[str, str]] = {}
        for index, raw in enumerate(data["categories"]):
            record = f"categories[{index}]"
            item = check.item(raw, record)
            category_id = check.integer(item, "id", record)
            name = check.string(item, "name", record)
            supercategory = check.optional_string(item, "supercategory", record) or ""
            categories.setdefault(category_id, (name, supercategory))
        seen_ids: set[int] = set()
        for index, raw in enumerate(data["annotations"]):
            item, record, annotation_id, image_id = _annotation_head(check, raw, index)
            category_id = check.integer(item, "category_id", record)
            bbox = check.bbox(item, record)
            iscrowd = check.flag(item, "iscrowd", record)
            area = check.number(item, "area", record)
            target = _annotation_target(
                annotation_id,
                image_id,
                seen_ids,
                records,
                counts,
                unlisted="objects_for_unlisted_images",
            )
            if target is None:
                continue
            category = categories.get(category_id)
            if category is None:
                counts["objects_unknown_category"] += 1
                target.problems.append(
                    f"unknown_category: annotation {annotation_id} has category_id "
                    f"{category_id}, which 'categories' does not define"
                )
                continue
            if bbox is not None and (bbox[2] <= 0 or bbox[3] <= 0):
                counts["objects_degenerate_box"] += 1
                target.problems.append(
                    f"degenerate_box: annotation {annotation_id} has box {bbox}; kept without it"
                )
                bbox = None
            if iscrowd:
                counts["crowd_annotations"] += 1
            target.objects.append(
                ObjectAnnotation(
                    category=category[0],
                    supercategory=category[1],
                    bbox=bbox,
                    iscrowd=iscrowd,
                    annotation_id=annotation_id,
                    area=area,
                )
            )


def _annotation_head(
    check: FieldChecker, raw: Any, index: int
) -> tuple[dict[str, Any], str, int | None, str]:
    """A caption or object annotation checked as an object: (item, the label messages use,
    annotation id or ``None``, image id)."""
    record = f"annotations[{index}]"
    item = check.item(raw, record)
    annotation_id = check.optional_integer(item, "id", record)
    if annotation_id is not None:
        record = f"annotations[{index}] (id {annotation_id})"
    return item, record, annotation_id, check.image_id(item, record)


def _annotation_target(
    annotation_id: int | None,
    image_id: str,
    seen_ids: set[int],
    records: dict[str, ImageRecord],
    counts: Counter[str],
    *,
    unlisted: str,
) -> ImageRecord | None:
    """The record a caption or object annotation belongs to; ``None`` (counted) when the
    annotation id was seen before or its image is not listed (counted under ``unlisted``).
    """
    if annotation_id is not None:
        if annotation_id in seen_ids:
            counts["duplicate_annotation_ids"] += 1
            return None
        seen_ids.add(annotation_id)
    target = records.get(image_id)
    if target is None:
        counts[unlisted] += 1
    return target
