"""What both collectors share: the result object, the image folder (a local path or a URL on
object storage) and the check of image files."""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from vlit.collect._io import PROGRESS_EVERY, ProgressCallback, read_image_size
from vlit.errors import InputFileError
from vlit.images import is_url, read_remote_bytes
from vlit.schema import ImageRecord
from vlit.storage import filesystem


@dataclass
class CollectResult:
    """Collected records and the counts of what was read, fixed and skipped."""

    records: list[ImageRecord]
    summary: dict[str, Any]


def image_folder(images_dir: str | os.PathLike[str]) -> str:
    """The image folder as records keep it: a URL as given, a local path made absolute."""
    given = os.fspath(images_dir)
    return given.rstrip("/") if is_url(given) else os.path.abspath(given)


def check_image_folder(folder: str) -> None:
    """`InputFileError` unless ``folder`` exists (on object storage: holds some object)."""
    if is_url(folder):
        storage, path = filesystem(folder)
        if not storage.isdir(path):
            raise InputFileError(
                "the image folder does not exist on object storage (no object under it)",
                file=folder,
                fix="pass the URL of the folder that holds the image files",
            )
    elif not os.path.isdir(folder):
        raise InputFileError(
            "the image folder does not exist"
            if not os.path.exists(folder)
            else "expected the image folder but got a file",
            file=folder,
            fix="pass --images with the folder that holds the image files",
        )


def check_image_files(
    records: list[ImageRecord],
    counts: Counter[str],
    on_progress: ProgressCallback | None,
) -> None:
    """Check each record's image; note problems on the record and count them.

    Reads only image headers (an image on object storage is fetched whole). A missing or
    unreadable file keeps its record (with a ``problems`` entry); a record without
    width/height gets them from the file; a file whose size differs from the annotation's is
    noted (the annotation's size is kept, since boxes were drawn on it).
    """
    step = "checking image files"
    total = len(records)
    for done, record in enumerate(records, start=1):
        path = record.location
        try:
            width, height = _image_size(path)
        except FileNotFoundError:
            record.problems.append(f"missing_file: no image file at {path}")
            counts["images_missing_file"] += 1
        except OSError as error:
            record.problems.append(f"unreadable_image: {path}: {error}")
            counts["images_unreadable"] += 1
        else:
            if record.width is None or record.height is None:
                record.width, record.height = width, height
            elif (record.width, record.height) != (width, height):
                record.problems.append(
                    f"size_mismatch: annotations say {record.width}x{record.height}, "
                    f"the file is {width}x{height}"
                )
                counts["images_size_mismatch"] += 1
        if on_progress is not None and (done % PROGRESS_EVERY == 0 or done == total):
            on_progress(step, done, total)


def _image_size(location: str) -> tuple[int, int]:
    """Width and height of the image at a local path or URL; `FileNotFoundError` if absent."""
    if is_url(location):
        return read_image_size(io.BytesIO(read_remote_bytes(location)))
    if not os.path.isfile(location):
        raise FileNotFoundError(location)
    return read_image_size(location)


#: The counters `finish_counts` reads off the finished records (every collector reports them).
RECORD_COUNTERS = (
    "images",
    "captions",
    "objects",
    "vqa",
    "ocr",
    "attributes",
    "objects_with_attributes",
    "records_with_problems",
)


def finish_counts(records: list[ImageRecord], counts: Counter[str]) -> None:
    """Counts that are read off the finished records."""
    counts["images"] = len(records)
    counts["captions"] = sum(len(r.captions) for r in records)
    counts["objects"] = sum(len(r.objects) for r in records)
    counts["vqa"] = sum(len(r.vqa) for r in records)
    counts["ocr"] = sum(len(r.ocr) for r in records)
    counts["attributes"] = sum(len(o.attributes) for r in records for o in r.objects)
    counts["objects_with_attributes"] = sum(1 for r in records for o in r.objects if o.attributes)
    counts["records_with_problems"] = sum(1 for r in records if r.problems)
