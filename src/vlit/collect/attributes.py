"""Object attributes, attached to COCO objects by annotation id (or by box, for Visual Genome).

Accepted JSON layouts (detected from the top level):

``cocottributes``
    COCO Attributes (Patterson & Hays, ECCV 2016) as released, converted to JSON:
    ``{"attributes": [{"id", "name"}, ...], "ann_vecs": {patch_id: [204 values]},
    "patch_id_to_ann_id": {patch_id: coco_annotation_id}, "split": {...}}``. The vector
    follows the attributes sorted by ``id``; a value above 0.5 (the workers' vote) means the
    attribute is present.
``cocottributes_by_annotation``
    The same data keyed by annotation id: ``{"attributes": [...], "ann_attrs":
    {annotation_id: {"attrs_vector": [...], "split": ...}}}``.
``simple``
    ``{"annotations": [{"annotation_id": 151091, "attributes": ["red", "shiny"]}, ...]}``.
``visual_genome``
    Visual Genome's ``attributes.json`` shape: ``[{"image_id" or "coco_id", "attributes":
    [{"x", "y", "w", "h", "names": [...], "attributes": [...]}, ...]}, ...]``. Visual Genome
    objects have no COCO annotation id, so each region goes to the object of the same image
    whose box overlaps it most (intersection over union at least 0.5). Use ``coco_id`` (from
    Visual Genome's ``image_data.json``) when your image ids are COCO's.

The official release is a pickle (``cocottributes_eccv_version.pkl``); vlit never unpickles
files. Convert it once to JSON in a Python you trust (see ``docs/collect_jsonl.md``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlit.collect._io import FieldChecker, load_json_file, normalise_text, type_name
from vlit.errors import InputFileError
from vlit.schema import ImageRecord

WHAT = "attributes"

#: A COCO Attributes vote above this means the attribute is present (as in the release's demo).
VOTE_THRESHOLD = 0.5

#: A Visual Genome region must overlap a COCO box at least this much (IoU) to take its words.
MIN_REGION_IOU = 0.5


@dataclass
class RegionAttributes:
    """Attribute words for a box, to be matched to an object by overlap."""

    bbox: list[float]
    attributes: list[str]
    names: list[str] = field(default_factory=list)


@dataclass
class AttributeSource:
    """Attribute words by COCO annotation id, and by box per image id (Visual Genome)."""

    layout: str
    by_annotation: dict[int, list[str]] = field(default_factory=dict)
    by_image: dict[str, list[RegionAttributes]] = field(default_factory=dict)


def detect_attribute_layout(data: Any) -> str:
    if isinstance(data, dict):
        if "ann_vecs" in data:
            return "cocottributes"
        if "ann_attrs" in data:
            return "cocottributes_by_annotation"
        if "annotations" in data:
            return "simple"
    if isinstance(data, list):
        return "visual_genome"
    raise ValueError(type_name(data) if not isinstance(data, dict) else f"keys {sorted(data)[:6]}")


def load_attributes(path: str | Path) -> AttributeSource:
    """Read an attributes file in any accepted layout (see the module docstring)."""
    data = load_json_file(path, what=WHAT)
    check = FieldChecker(path, what=WHAT)
    try:
        layout = detect_attribute_layout(data)
    except ValueError as error:
        raise InputFileError(
            f"not an attributes file vlit knows (got {error}): expected COCO Attributes "
            "('ann_vecs' or 'ann_attrs'), {\"annotations\": [...]}, or a Visual Genome list",
            file=str(path),
            fix="see docs/collect_jsonl.md, section 'Attributes', for the accepted layouts",
        ) from error
    source = AttributeSource(layout=layout)
    if layout == "cocottributes":
        names = _attribute_names(data, check)
        vectors = _mapping(data, "ann_vecs", check)
        patch_to_ann = _mapping(data, "patch_id_to_ann_id", check)
        for patch_id, vector in vectors.items():
            record = f"ann_vecs[{patch_id!r}]"
            if patch_id not in patch_to_ann:
                raise check.fail(record, "this patch id is missing from 'patch_id_to_ann_id'")
            annotation_id = check.integer(
                patch_to_ann, patch_id, f"patch_id_to_ann_id[{patch_id!r}]"
            )
            _add(source, annotation_id, _words_from_vector(vector, names, check, record))
    elif layout == "cocottributes_by_annotation":
        names = _attribute_names(data, check)
        for key, entry in _mapping(data, "ann_attrs", check).items():
            record = f"ann_attrs[{key!r}]"
            annotation_id = _int_key(key, check, record)
            item = check.item(entry, record)
            _add(
                source,
                annotation_id,
                _words_from_vector(item.get("attrs_vector"), names, check, record),
            )
    elif layout == "simple":
        for index, raw in enumerate(check.list_at(data, "annotations")):
            record = f"annotations[{index}]"
            item = check.item(raw, record)
            annotation_id = check.integer(item, "annotation_id", record)
            _add(source, annotation_id, check.strings(item, "attributes", record))
    else:
        for index, raw in enumerate(data):
            record = f"[{index}]"
            item = check.item(raw, record)
            key = "coco_id" if item.get("coco_id") is not None else "image_id"
            image_id = check.image_id(item, record, key=key)
            regions = item.get("attributes") or []
            if not isinstance(regions, list):
                raise check.fail(record, f"'attributes' should be a list, got {type_name(regions)}")
            for position, region_raw in enumerate(regions):
                region_record = f"{record} attributes[{position}]"
                region = check.item(region_raw, region_record)
                box = [check.number(region, key, region_record) for key in ("x", "y", "w", "h")]
                words = check.strings(region, "attributes", region_record)
                names = check.strings(region, "names", region_record)
                if any(value is None for value in box):
                    raise check.fail(region_record, "a region needs numbers 'x', 'y', 'w', 'h'")
                source.by_image.setdefault(image_id, []).append(
                    RegionAttributes(
                        bbox=[float(v) for v in box if v is not None],
                        attributes=_clean(words),
                        names=names,
                    )
                )
    return source


def attach_attributes(
    records: list[ImageRecord], source: AttributeSource, counts: Counter[str]
) -> None:
    """Add attribute words to the objects they describe; count what could not be placed.

    Counts ``attributes_for_unknown_annotations`` (no object with that annotation id),
    ``attributes_for_unlisted_images`` and ``attributes_unmatched_regions`` (Visual Genome
    regions with no overlapping object).
    """
    objects_by_id = {
        obj.annotation_id: obj
        for record in records
        for obj in record.objects
        if obj.annotation_id is not None
    }
    for annotation_id, words in source.by_annotation.items():
        target = objects_by_id.get(annotation_id)
        if target is None:
            counts["attributes_for_unknown_annotations"] += 1
            continue
        _merge(target.attributes, words)
    records_by_id = {record.image_id: record for record in records}
    for image_id, regions in source.by_image.items():
        image = records_by_id.get(image_id)
        if image is None:
            counts["attributes_for_unlisted_images"] += len(regions)
            continue
        for region in regions:
            best, best_iou = None, MIN_REGION_IOU
            for obj in image.objects:
                if obj.bbox is None:
                    continue
                overlap = box_iou(obj.bbox, region.bbox)
                if overlap >= best_iou:
                    best, best_iou = obj, overlap
            if best is None:
                counts["attributes_unmatched_regions"] += 1
                continue
            _merge(best.attributes, region.attributes)


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    width = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    height = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = width * height
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _attribute_names(data: dict[str, Any], check: FieldChecker) -> list[str]:
    entries = check.list_at(data, "attributes") if "attributes" in data else None
    if entries is None:
        raise InputFileError(
            "COCO Attributes data needs its 'attributes' list ({id, name}) to name the vector "
            "positions",
            file=check.file,
            fix="convert the whole release dictionary, not only 'ann_vecs'",
        )
    named = []
    for index, raw in enumerate(entries):
        record = f"attributes[{index}]"
        item = check.item(raw, record)
        named.append((check.integer(item, "id", record), check.string(item, "name", record)))
    return [name for _, name in sorted(named)]


def _mapping(data: dict[str, Any], key: str, check: FieldChecker) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise InputFileError(
            f"'{key}' should be an object keyed by id, got {type_name(value)}",
            file=check.file,
            fix="convert the release with the snippet in docs/collect_jsonl.md",
        )
    return value


def _int_key(key: str, check: FieldChecker, record: str) -> int:
    try:
        return int(key)
    except ValueError as error:
        raise check.fail(record, f"the key {key!r} should be a COCO annotation id") from error


def _words_from_vector(
    vector: Any, names: list[str], check: FieldChecker, record: str
) -> list[str]:
    if (
        not isinstance(vector, list)
        or len(vector) != len(names)
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in vector)
    ):
        size = len(vector) if isinstance(vector, list) else type_name(vector)
        raise check.fail(
            record,
            f"the attribute vector should hold {len(names)} numbers (one per entry of "
            f"'attributes'), got {size}",
        )
    return [name for name, vote in zip(names, vector, strict=True) if vote > VOTE_THRESHOLD]


def _add(source: AttributeSource, annotation_id: int, words: list[str]) -> None:
    _merge(source.by_annotation.setdefault(annotation_id, []), _clean(words))


def _clean(words: list[str]) -> list[str]:
    return [text for text in (normalise_text(w).lower() for w in words) if text]


def _merge(target: list[str], words: list[str]) -> None:
    """Append the words ``target`` lacks, in order."""
    for word in words:
        if word not in target:
            target.append(word)
