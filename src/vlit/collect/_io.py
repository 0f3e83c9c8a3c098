"""Reading annotation files: JSON loading, field checks, image paths and image headers.

Every failure names the file, the record (index and id where known) and what to do.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

from PIL import UnidentifiedImageError

from vlit.errors import InputFileError
from vlit.images import open_image, reference_problem
from vlit.jsonio import json_type_name, parse_json_bytes

#: Called by collectors as work goes on: (step description, items done, items in total or None).
ProgressCallback = Callable[[str, int, "int | None"], None]

#: How often (in items) collectors report progress.
PROGRESS_EVERY = 256

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".jbl", ".npy", ".npz"}
_PICKLE_MAGIC = b"\x80"  # every pickle protocol >= 2 starts with the PROTO opcode


def load_json_file(path: str | os.PathLike[str], *, what: str) -> Any:
    """Parse one JSON annotation file, or raise `InputFileError` naming it and the fix.

    ``what`` names the file's role for the message ("COCO captions", "VQA v2 questions", ...).
    Pickled files are refused: unpickling runs code from the file.
    """
    file = Path(path)
    if not file.exists():
        raise InputFileError(
            f"{what} file not found", file=str(file), fix="check the path and its spelling"
        )
    if file.is_dir():
        raise InputFileError(
            f"expected the {what} JSON file but got a folder",
            file=str(file),
            fix="pass the .json file inside it",
        )
    if file.suffix.lower() in _PICKLE_SUFFIXES:
        raise_pickle_refused(file, what)
    raw = file.read_bytes()
    if raw.startswith(_PICKLE_MAGIC):
        raise_pickle_refused(file, what)
    if not raw.strip():
        raise InputFileError(
            f"the {what} file is empty", file=str(file), fix="re-download or re-export it"
        )
    return parse_json_bytes(raw, file=file, what=what)


def raise_pickle_refused(file: Path, what: str) -> NoReturn:
    raise InputFileError(
        f"the {what} file is a pickle; vlit reads JSON only, because loading a pickle runs "
        "code from the file",
        file=str(file),
        fix="convert it once to JSON in a Python you trust (see docs/collect_jsonl.md, "
        "'COCO Attributes') and pass the .json file",
    )


def type_name(value: Any) -> str:
    """`json_type_name` with integers named apart, as collectors' field messages need."""
    return json_type_name(value, integers_apart=True)


class FieldChecker:
    """Type checks on JSON records that fail with one line naming file, record and field."""

    def __init__(self, file: str | os.PathLike[str], *, what: str) -> None:
        self.file = str(file)
        self.what = what

    def fail(self, record: str, problem: str, fix: str | None = None) -> InputFileError:
        return InputFileError(
            problem,
            file=self.file,
            record=record,
            fix=fix or f"repair this record or re-export the {self.what} file",
        )

    def top_object(self, data: Any, keys: tuple[str, ...]) -> dict[str, Any]:
        """The file's top level must be an object holding ``keys``."""
        if not isinstance(data, dict):
            raise InputFileError(
                f"expected a JSON object with {', '.join(repr(k) for k in keys)} at the top, "
                f"got {type_name(data)}",
                file=self.file,
                fix=f"pass a {self.what} file",
            )
        missing = [key for key in keys if key not in data]
        if missing:
            raise InputFileError(
                f"the top-level object has no {', '.join(repr(k) for k in missing)}",
                file=self.file,
                fix=f"pass a {self.what} file",
            )
        return data

    def list_at(self, data: dict[str, Any], key: str) -> list[Any]:
        value = data[key]
        if not isinstance(value, list):
            raise InputFileError(
                f"'{key}' should be a list, got {type_name(value)}",
                file=self.file,
                fix=f"pass a {self.what} file",
            )
        return value

    def item(self, value: Any, record: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(record, f"expected an object, got {type_name(value)}")
        return value

    def image_id(self, item: dict[str, Any], record: str, key: str = "image_id") -> str:
        """An image id (COCO uses integers; strings are accepted), returned as a string."""
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
            raise self.fail(
                record, f"'{key}' should be an integer or a non-empty string, got {_show(value)}"
            )
        return str(value)

    def integer(self, item: dict[str, Any], key: str, record: str) -> int:
        value = item.get(key)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(record, f"'{key}' should be an integer, got {_show(value)}")
        return value

    def optional_integer(self, item: dict[str, Any], key: str, record: str) -> int | None:
        return None if item.get(key) is None else self.integer(item, key, record)

    def number(self, item: dict[str, Any], key: str, record: str) -> float | None:
        value = item.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(record, f"'{key}' should be a number, got {_show(value)}")
        return float(value)

    def string(self, item: dict[str, Any], key: str, record: str) -> str:
        value = item.get(key)
        if not isinstance(value, str):
            raise self.fail(record, f"'{key}' should be a string, got {_show(value)}")
        return value

    def optional_string(self, item: dict[str, Any], key: str, record: str) -> str | None:
        return None if item.get(key) is None else self.string(item, key, record)

    def flag(self, item: dict[str, Any], key: str, record: str) -> bool:
        value = item.get(key, 0)
        if value in (0, 1) and isinstance(value, int | bool):
            return bool(value)
        raise self.fail(record, f"'{key}' should be 0 or 1, got {_show(value)}")

    def bbox(self, item: dict[str, Any], record: str, key: str = "bbox") -> list[float] | None:
        value = item.get(key)
        if value is None:
            return None
        if isinstance(value, list) and len(value) == 4:
            box = []
            for number in value:  # one pass: this runs for every COCO object
                kind = type(number)
                if kind is int or (kind is float and math.isfinite(number)):
                    box.append(float(number))
                else:
                    break
            else:
                return box
        raise self.fail(
            record, f"'{key}' should be [x, y, width, height] in pixels, got {_show(value)}"
        )

    def strings(self, item: dict[str, Any], key: str, record: str) -> list[str]:
        value = item.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(record, f"'{key}' should be a list of strings, got {_show(value)}")
        return list(value)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type_name(value)} {text}" if value is not None else "nothing (missing or null)"


def normalise_text(text: str) -> str:
    """Collapse runs of whitespace (spaces, tabs, newlines) to one space and strip the ends."""
    return " ".join(text.split())


def escapes_root(file_name: str) -> bool:
    """True when ``file_name`` is absolute or climbs out of the image folder with ``..``.

    The check is lexical (`vlit.images.reference_problem`, no symlink resolution), so datasets
    whose image folder holds symlinks keep working, while ``../../etc/passwd`` and
    ``/etc/passwd`` are refused.
    """
    return reference_problem(file_name) is not None


def read_image_size(path: str | os.PathLike[str] | IO[bytes]) -> tuple[int, int]:
    """Width and height from the image header (the pixels are not decoded).

    Raises ``OSError`` when the file cannot be read as an image.
    """
    try:
        with open_image(path) as image:
            return int(image.width), int(image.height)
    except UnidentifiedImageError as error:
        raise OSError(f"not an image file PIL can read ({error})") from error
