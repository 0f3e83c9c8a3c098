"""Parsing JSON input with one-line errors, shared by collectors and format readers.

Example::

    document = parse_json_bytes(path.read_bytes(), file=path, what="COCO captions")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from vlit.errors import InputFileError


def parse_json_bytes(
    raw: bytes,
    *,
    file: str | os.PathLike[str],
    what: str,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse a whole JSON document, or raise `InputFileError` naming ``file``, the position
    and the fix; ``what`` names the file's role in the fix ("COCO captions", "dataset")."""
    try:
        return json.loads(raw, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as error:
        problem = f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})"
        if error.pos >= len(error.doc.rstrip()) or error.pos >= len(raw):
            problem += "; the file ends early, it looks truncated"
        raise InputFileError(
            problem,
            file=str(file),
            fix=f"re-download or re-export the {what} file "
            "(check it with `python -m json.tool FILE`)",
        ) from error
    except UnicodeDecodeError as error:
        raise InputFileError(
            f"not UTF-8 text (byte {error.start}: {error.reason})",
            file=str(file),
            fix=f"re-export the {what} file as UTF-8 JSON",
        ) from error


def json_type_name(value: Any, *, integers_apart: bool = False) -> str:
    """How JSON calls the type of a parsed value, for messages ("a string", "an object").

    JSON has one number type; ``integers_apart=True`` calls an integral value "an integer"
    (for messages about fields that must be integers).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int) and integers_apart:
        return "an integer"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
