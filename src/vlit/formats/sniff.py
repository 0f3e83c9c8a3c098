"""Tell a dataset file's format from its first record (``--format auto``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vlit.errors import InputFileError
from vlit.formats.base import check_input_file

_HEAD_BYTES = 1 << 20
_JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_PAPER_KEYS = re.compile(r'"(annotations|image_source|construction_time)"\s*:')
_MIMICIT_KEYS = re.compile(r'"(data|meta)"\s*:')
_MIMICIT_ENTRY = re.compile(r'"(instruction|rel_ins_ids|image_ids)"\s*:')


def classify_record(record: Any) -> str | None:
    """The format one record belongs to, or ``None`` if it is none of ours."""
    if not isinstance(record, dict):
        return None
    if "sample_id" in record and "turns" in record:
        return "jsonl"
    if "messages" in record:
        return "sharegpt"
    if "conversations" in record:
        turns = record["conversations"]
        has_system = isinstance(turns, list) and any(
            isinstance(turn, dict) and turn.get("from") == "system" for turn in turns
        )
        if "images" in record or "system" in record or has_system:
            return "sharegpt"
        return "llava"
    return None


def sniff_format(path: Path, choices: tuple[str, ...]) -> str:
    """The format name of ``path``; `InputFileError` (listing ``choices``) if it cannot tell."""
    check_input_file(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES).decode("utf-8-sig", errors="replace")
    found: str | None = None
    if suffix in _JSON_LINES_SUFFIXES:
        first_line = next((line for line in head.splitlines() if line.strip()), "")
        found = classify_record(_parse_or_none(first_line))
    else:
        text = head.lstrip()
        if text.startswith("["):
            found = classify_record(_first_element(text, path))
        elif text.startswith("{"):
            if _PAPER_KEYS.search(head):
                found = "paper"
            elif _MIMICIT_KEYS.search(head) and _MIMICIT_ENTRY.search(head):
                found = "mimicit"
    if found is None:
        raise InputFileError(
            "cannot tell which dataset format this file is",
            file=str(path),
            fix=f"pass --format, one of: {', '.join(choices)}",
        )
    return found


def _parse_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # bad syntax, huge integers, deep nesting
        return None


def _first_element(text: str, path: Path) -> Any:
    """The first element of a JSON array, decoded from the head (or the whole file if longer)."""
    decoder = json.JSONDecoder()
    start = len(text) - len(text[1:].lstrip())
    try:
        return decoder.raw_decode(text, start)[0]
    except (ValueError, RecursionError):
        full = path.read_text(encoding="utf-8-sig", errors="replace").lstrip()
        try:
            return decoder.raw_decode(full, len(full) - len(full[1:].lstrip()))[0]
        except (ValueError, RecursionError):
            return None
