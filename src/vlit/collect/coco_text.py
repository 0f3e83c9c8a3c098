"""COCO-Text: text strings read in COCO images, in either of its two published formats.

1. The dataset file ``COCO_Text.json`` (v1.4 and v2.0): a top-level object with ``imgs``,
   ``anns`` and ``imgToAnns``; ``anns`` maps an annotation id to ``{"image_id", "bbox",
   "utf8_string", "legibility": "legible" | "illegible", "class", "language", ...}``
   (illegible text may lack ``utf8_string``).
2. The results format used for submissions: a list of ``{"image_id", "utf8_string", "bbox",
   "score", "category_id"}``. It has no legibility, so every entry counts as legible.

The format is detected from the top level. Illegible text is kept with ``legible=False``;
the visual clue uses legible text only.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from vlit.collect._io import FieldChecker, load_json_file, normalise_text, type_name
from vlit.errors import InputFileError
from vlit.schema import OcrText

WHAT = "COCO-Text"


def detect_coco_text_format(data: Any) -> str:
    """``"dataset"`` for ``COCO_Text.json``, ``"results"`` for the results list."""
    if isinstance(data, dict) and "anns" in data:
        return "dataset"
    if isinstance(data, list):
        return "results"
    raise ValueError(type_name(data))


def load_coco_text(path: str | Path, counts: Counter[str]) -> dict[str, list[OcrText]]:
    """Read a COCO-Text file (either format) and return the text strings per image id.

    Counts ``ocr_illegible`` (kept, marked), ``ocr_empty_text`` (legible but no string:
    skipped) and ``ocr_duplicates`` (same image, string and box: skipped).
    """
    data = load_json_file(path, what=WHAT)
    check = FieldChecker(path, what=WHAT)
    try:
        kind = detect_coco_text_format(data)
    except ValueError as error:
        raise InputFileError(
            f"not a COCO-Text file: expected an object with 'anns' (COCO_Text.json) or a "
            f"list of results, got {error}",
            file=str(path),
            fix="pass COCO_Text.json or a results-format list",
        ) from error
    if kind == "dataset":
        anns = data["anns"]
        if not isinstance(anns, dict):
            raise check.fail(
                "anns", f"'anns' should map annotation ids to objects, got {type_name(anns)}"
            )
        entries = [(f"anns[{key!r}]", value) for key, value in anns.items()]
    else:
        entries = [(f"[{index}]", value) for index, value in enumerate(data)]

    texts: dict[str, list[OcrText]] = {}
    seen: set[tuple[str, str, tuple[float, ...] | None]] = set()
    for record, raw in entries:
        item = check.item(raw, record)
        image_id = check.image_id(item, record)
        text = normalise_text(check.optional_string(item, "utf8_string", record) or "")
        bbox = check.bbox(item, record)
        legible = True
        if kind == "dataset":
            legibility = check.optional_string(item, "legibility", record) or "legible"
            if legibility not in ("legible", "illegible"):
                raise check.fail(
                    record, f"'legibility' should be 'legible' or 'illegible', got {legibility!r}"
                )
            legible = legibility == "legible"
        if not legible:
            counts["ocr_illegible"] += 1
        elif not text:
            counts["ocr_empty_text"] += 1
            continue
        key = (image_id, text, tuple(bbox) if bbox else None)
        if key in seen:
            counts["ocr_duplicates"] += 1
            continue
        seen.add(key)
        texts.setdefault(image_id, []).append(OcrText(text=text, bbox=bbox, legible=legible))
    return texts
