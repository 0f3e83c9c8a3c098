"""The visual clue: an image record told in plain words, for a text-only LLM.

One template per annotation type, joined in a fixed order: captions, object counts per
``supercategory_category``, question-answer pairs, legible text, then per-object attributes.
The same record always gives the same text (counts are sorted; nothing is random).

Example:
    >>> from vlit.schema import ImageRecord, ObjectAnnotation
    >>> record = ImageRecord(
    ...     image_id="1", file_name="a.jpg", width=100, height=100,
    ...     captions=["Two bottles on a table."],
    ...     objects=[ObjectAnnotation("bottle", "kitchen", [5, 5, 10, 30]),
    ...              ObjectAnnotation("bottle", "kitchen", [20, 5, 10, 30])])
    >>> print(visual_clue(record))
    People describe this picture as follows: Two bottles on a table.
    Visible objects, counted by kind: 2 kitchen_bottle.
"""

from __future__ import annotations

from collections import Counter

from vlit.errors import RecordError
from vlit.schema import ImageRecord, ObjectAnnotation

#: One template per annotation type (our own wording). ``{...}`` is filled by the renderer.
CLUE_TEMPLATES: dict[str, str] = {
    "captions": "People describe this picture as follows: {captions}",
    "objects": "Visible objects, counted by kind: {counts}.",
    "vqa": "Questions asked about this picture, each with the answer most people gave: {pairs}",
    "ocr": "Written text that can be read in the picture: {texts}.",
    "attributes": "Details of single objects: {details}.",
    "empty": "Nothing has been annotated for this picture.",
}

#: Templates of the region clue, about the one object in the drawn box.
REGION_TEMPLATES: dict[str, str] = {
    "object": "The object in the box is {what}.",
    "group": "The box holds a group of {what} (a crowd, marked as one region).",
    "attributes": "It can be described as {attributes}.",
    "place": (
        "It sits in the {position} of the picture and covers about {percent} of its area, "
        "so it looks {size} in the frame."
    ),
    "box": (
        "Its box, as fractions of the picture's width and height, runs from ({left}, {top}) "
        "to ({right}, {bottom})."
    ),
    "unplaced": "Where it is in the picture is not known.",
    "same_kind": "The picture shows {others} more {key} besides this one.",
    "context": "About the whole picture: {clue}",
}

#: Below this share of the image area an object is "small"; below the next, "medium".
SMALL_SHARE = 0.05
MEDIUM_SHARE = 0.25


def object_key(obj: ObjectAnnotation) -> str:
    """``supercategory_category`` (``kitchen_bottle``), or the category when there is none."""
    return f"{obj.supercategory}_{obj.category}" if obj.supercategory else obj.category


def count_objects(objects: list[ObjectAnnotation]) -> list[tuple[str, int, int]]:
    """``(key, single objects, crowd groups)`` per kind, most frequent first, then by name."""
    singles: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for obj in objects:
        (groups if obj.iscrowd else singles)[object_key(obj)] += 1
    keys = set(singles) | set(groups)
    ordered = sorted(keys, key=lambda key: (-(singles[key] + groups[key]), key))
    return [(key, singles[key], groups[key]) for key in ordered]


def visual_clue(record: ImageRecord) -> str:
    """The whole-image clue: one line per annotation type present."""
    lines = []
    captions = [_sentence(c[:1].upper() + c[1:]) for c in map(str.strip, record.captions) if c]
    if captions:
        lines.append(CLUE_TEMPLATES["captions"].format(captions=" ".join(captions)))
    counts = count_objects(record.objects)
    if counts:
        parts = [_count_phrase(key, singles, groups) for key, singles, groups in counts]
        lines.append(CLUE_TEMPLATES["objects"].format(counts=", ".join(parts)))
    pairs = [
        f"Q: {_question(pair.question)} A: {_sentence(answer)}"
        for pair in record.vqa
        if (answer := pair.majority_answer or (pair.answers[0] if pair.answers else ""))
        and pair.question.strip()
    ]
    if pairs:
        lines.append(CLUE_TEMPLATES["vqa"].format(pairs=" ".join(pairs)))
    texts = list(dict.fromkeys(t.text for t in record.ocr if t.legible and t.text.strip()))
    if texts:
        lines.append(CLUE_TEMPLATES["ocr"].format(texts=", ".join(f'"{t}"' for t in texts)))
    details = _attribute_details(record)
    if details:
        lines.append(CLUE_TEMPLATES["attributes"].format(details="; ".join(details)))
    if not lines:
        lines.append(CLUE_TEMPLATES["empty"])
    return "\n".join(lines)


def region_clue(record: ImageRecord, object_index: int) -> str:
    """The clue for one object (``record.objects[object_index]``) followed by the whole picture.

    Says what the object is, its attributes, where it sits and how much of the picture it
    covers. Raises `RecordError` when the index is out of range.
    """
    count = len(record.objects)
    if not 0 <= object_index < count:
        raise RecordError(
            f"object index {object_index} is out of range; image {record.image_id} has "
            f"{count} object(s)",
            record=record.image_id,
            fix=f"use an object index from 0 to {count - 1}"
            if count
            else "this image has no objects, so only its whole-image clue exists",
        )
    obj = record.objects[object_index]
    what = (
        obj.category
        if obj.supercategory in ("", obj.category)
        else (f"{obj.category} ({obj.supercategory})")
    )
    lines = [
        REGION_TEMPLATES["group" if obj.iscrowd else "object"].format(
            what=what if obj.iscrowd else f"{_article(obj.category)} {what}"
        )
    ]
    if obj.attributes:
        lines.append(REGION_TEMPLATES["attributes"].format(attributes=_join(obj.attributes)))
    if obj.bbox is not None and record.width and record.height:
        size, share = describe_size(obj.bbox, record.width, record.height)
        lines.append(
            REGION_TEMPLATES["place"].format(
                position=describe_position(obj.bbox, record.width, record.height),
                percent=_percent(share),
                size=size,
            )
        )
        x, y, w, h = obj.bbox
        lines.append(
            REGION_TEMPLATES["box"].format(
                left=_fraction(x / record.width),
                top=_fraction(y / record.height),
                right=_fraction((x + w) / record.width),
                bottom=_fraction((y + h) / record.height),
            )
        )
    else:
        lines.append(REGION_TEMPLATES["unplaced"])
    key = object_key(obj)
    others = sum(
        1 for i, o in enumerate(record.objects) if i != object_index and object_key(o) == key
    )
    if others:
        lines.append(REGION_TEMPLATES["same_kind"].format(others=others, key=key))
    lines.append(REGION_TEMPLATES["context"].format(clue=visual_clue(record)))
    return "\n".join(lines)


def describe_position(bbox: list[float], width: int | float, height: int | float) -> str:
    """Where a box's centre falls on a 3x3 grid: ``"top left"``, ``"bottom centre"``,
    ``"middle right"``, ... and ``"centre"`` for the middle cell.

    >>> describe_position([0, 0, 50, 50], 400, 300)
    'top left'
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x, y, w, h = bbox
    centre_x = (x + w / 2) / width
    centre_y = (y + h / 2) / height
    horizontal = "left" if centre_x < 1 / 3 else "right" if centre_x > 2 / 3 else "centre"
    vertical = "top" if centre_y < 1 / 3 else "bottom" if centre_y > 2 / 3 else "middle"
    if (vertical, horizontal) == ("middle", "centre"):
        return "centre"
    return f"{vertical} {horizontal}"


def describe_size(bbox: list[float], width: int | float, height: int | float) -> tuple[str, float]:
    """``("small" | "medium" | "large", share of the image area covered by the box)``.

    >>> describe_size([0, 0, 100, 100], 200, 200)
    ('large', 0.25)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    share = min(1.0, max(0.0, bbox[2]) * max(0.0, bbox[3]) / (width * height))
    label = "small" if share < SMALL_SHARE else "medium" if share < MEDIUM_SHARE else "large"
    return label, share


# -- rendering helpers ---------------------------------------------------------------------------
def _count_phrase(key: str, singles: int, groups: int) -> str:
    parts = []
    if singles:
        parts.append(f"{singles} {key}")
    if groups == 1:
        parts.append(f"a group of {key}")
    elif groups > 1:
        parts.append(f"{groups} groups of {key}")
    return " and ".join(parts)


def _attribute_details(record: ImageRecord) -> list[str]:
    details = []
    for obj in record.objects:
        if not obj.attributes:
            continue
        where = ""
        if obj.bbox is not None and record.width and record.height:
            where = f" ({describe_position(obj.bbox, record.width, record.height)})"
        group = "group of " if obj.iscrowd else ""
        details.append(f"the {group}{obj.category}{where}: {', '.join(obj.attributes)}")
    return details


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text[-1:] in ".!?\"'" else f"{text}."


def _question(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith("?") else f"{text}?"


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _percent(share: float) -> str:
    value = share * 100
    return f"{value:.1f}%" if value < 1 else f"{value:.0f}%"


def _fraction(value: float) -> str:
    return f"{min(1.0, max(0.0, value)):.2f}"
