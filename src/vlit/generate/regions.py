"""Region mode: which objects get a conversation, and the image copy with the box drawn on it.

Objects are chosen by a seeded rule among those worth talking about: crowd annotations (a box
around many things) and tiny boxes are skipped. The copy of the image gets a rectangle in the
palette colour that stands out most against the pixels under the line, drawn just outside the
box so the object itself stays uncovered, with a line width that grows with the image size.

Example:
    >>> rule = RegionRule(min_area_fraction=0.01, per_image=1)
    >>> choose_regions(record, rule=rule, seed=0)            # doctest: +SKIP
    [3]
    >>> draw_region_box(record.path, record.objects[3].bbox, out)  # doctest: +SKIP
    'red'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageStat

from vlit.fileio import atomic_output
from vlit.generate.seeding import seeded_random
from vlit.images import id_file_stem, load_image
from vlit.schema import ImageRecord

#: Colours the box may take (name, RGB); the one farthest from the local pixels wins.
BOX_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (255, 0, 0)),
    ("green", (0, 230, 0)),
    ("blue", (0, 90, 255)),
    ("yellow", (255, 235, 0)),
    ("magenta", (255, 0, 255)),
    ("cyan", (0, 255, 255)),
)
REGIONS_FOLDER = "regions"


@dataclass(frozen=True)
class RegionRule:
    """Which boxes may become region conversations, and how many per image."""

    min_area_fraction: float = 0.01
    min_side_pixels: float = 16.0
    per_image: int = 1


def eligible_objects(record: ImageRecord, rule: RegionRule) -> list[int]:
    """Indices of objects with a box that is not a crowd and not too small."""
    indices = []
    image_area = (record.width or 0) * (record.height or 0)
    for index, obj in enumerate(record.objects):
        if obj.iscrowd or obj.bbox is None or len(obj.bbox) != 4:
            continue
        width, height = obj.bbox[2], obj.bbox[3]
        if min(width, height) < rule.min_side_pixels:
            continue
        if image_area and width * height < rule.min_area_fraction * image_area:
            continue
        indices.append(index)
    return indices


def choose_regions(record: ImageRecord, *, rule: RegionRule, seed: int) -> list[int]:
    """Up to ``rule.per_image`` eligible object indices, seeded by (seed, image id), sorted."""
    candidates = eligible_objects(record, rule)
    rng = seeded_random(seed, record.image_id, "region-objects")
    return sorted(rng.sample(candidates, min(rule.per_image, len(candidates))))


def region_image_name(image_id: str, object_index: int) -> str:
    """The copy's path relative to ``RUN/images``, e.g. ``regions/391895-obj3.jpg``."""
    return f"{REGIONS_FOLDER}/{id_file_stem(image_id)}-obj{object_index}.jpg"


def box_line_width(width: int, height: int) -> int:
    """About 0.6% of the longer side, at least 2 pixels (4 pixels on a 640-pixel photo)."""
    return max(2, round(max(width, height) * 0.006))


def draw_region_box(source: str | os.PathLike[str], bbox: list[float], target: Path) -> str:
    """Save a copy of ``source`` with ``bbox`` (``[x, y, w, h]`` pixels) drawn; its colour name.

    The copy is written atomically; if ``target`` already exists it is kept (the drawing is
    deterministic, so a rerun after a crash does not redo finished images). Raises
    `vlit.errors.RecordError` if the source image cannot be read.
    """
    image = load_image(source)
    x, y, w, h = bbox
    line = box_line_width(image.width, image.height)
    left = max(0, round(x) - line)
    top = max(0, round(y) - line)
    right = min(image.width - 1, round(x + w) + line - 1)
    bottom = min(image.height - 1, round(y + h) + line - 1)
    name, colour = _contrasting_colour(image, (left, top, right, bottom), line)
    if target.exists():
        return name
    ImageDraw.Draw(image).rectangle((left, top, right, bottom), outline=colour, width=line)
    with atomic_output(target, "wb") as handle:
        image.save(handle, format="JPEG", quality=95)
    return name


def _contrasting_colour(
    image: Image.Image, box: tuple[int, int, int, int], line: int
) -> tuple[str, tuple[int, int, int]]:
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        return BOX_COLOURS[0]
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).rectangle(box, outline=255, width=line)
    mean = ImageStat.Stat(image, mask).mean[:3]
    return max(
        BOX_COLOURS,
        key=lambda item: sum((a - b) ** 2 for a, b in zip(item[1], mean, strict=True)),
    )
