"""vlit's own samples as JSON lines: one sample per line, every field, readable by people.

A line is ``{"sample_id", "turns": [{"role", "text"}], "image_id", "image", "image_root",
"mode", "provenance": {...}, "scores": {...}, "labels", "failure_reason", "drop_reason",
"extra": {...}}``. Reading streams line by line; a line that does not parse, or lacks
``sample_id``/``turns``, is kept as a failed sample (with the line) and counted. A line's own
``image_root`` is not trusted: images are looked up under ``--images`` (default: the file's
folder).

Example:
    >>> JsonlWriter().write(samples, Path("samples.jsonl"))                 # doctest: +SKIP
    >>> list(JsonlReader().read(Path("samples.jsonl"), context))            # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from vlit.errors import RecordError
from vlit.fileio import atomic_output
from vlit.formats.base import (
    ImportContext,
    WriteCounts,
    parse_json_records,
    require_type,
)
from vlit.schema import ROLES, Sample


def sample_to_json(sample: Sample) -> dict[str, Any]:
    """A sample as a plain JSON object (nested provenance, extra and scores)."""
    return {
        "sample_id": sample.sample_id,
        "turns": [{"role": turn.role, "text": turn.text} for turn in sample.turns],
        "image_id": sample.image_id,
        "image": sample.image,
        "image_root": sample.image_root,
        "mode": sample.mode,
        "provenance": sample.provenance,
        "scores": dict(sorted(sample.scores.items())),
        "labels": list(sample.labels),
        "failure_reason": None if sample.failure_reason is None else str(sample.failure_reason),
        "drop_reason": None if sample.drop_reason is None else str(sample.drop_reason),
        "extra": sample.extra,
    }


def sample_from_json(row: Any) -> Sample:
    """The sample of one JSON object; `RecordError` if it does not have a sample's shape."""
    require_type(row, dict, "the line")
    require_type(row.get("sample_id"), (str, int), "`sample_id`")
    require_type(row.get("turns", []), list, "`turns`")
    for position, turn in enumerate(row.get("turns", [])):
        require_type(turn, dict, f"`turns[{position}]`")
        if turn.get("role") not in ROLES:
            raise RecordError(
                f"`turns[{position}].role` is {turn.get('role')!r}; use 'user' or 'assistant'"
            )
        require_type(turn.get("text"), str, f"`turns[{position}].text`")
    for key in ("provenance", "scores", "extra"):
        require_type(row.get(key) or {}, dict, f"`{key}`")
    for key in ("image_id", "image", "failure_reason", "drop_reason"):
        if row.get(key) is not None:
            require_type(row[key], str, f"`{key}`")
    require_type(row.get("labels") or [], list, "`labels`")
    return Sample.from_row(row)


class JsonlReader:
    """Reads vlit's JSON-lines samples, streaming."""

    name: ClassVar[str] = "jsonl"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def read(self, path: Path, context: ImportContext) -> Iterator[Sample]:
        # The image root comes from the user (--images, else the file's folder), never from
        # the line: a line's "image_root": "/etc" would otherwise pull any readable file in.
        root = context.image_root(path.parent)
        samples = parse_json_records(
            path,
            source_format=self.name,
            what="vlit JSONL",
            fix_type="one sample per line",
            parse=lambda row, _index: sample_from_json(row),
            id_key="sample_id",
        )
        for _index, sample, parsed in samples:
            if parsed:
                sample.image_root = root if sample.image is not None else ""
            yield sample


class JsonlWriter:
    """Writes samples as JSON lines (UTF-8, one object per line), atomically."""

    name: ClassVar[str] = "jsonl"

    def write(self, samples: Iterable[Sample], path: Path) -> WriteCounts:
        counts = WriteCounts(files=[str(path)])
        with atomic_output(path) as handle:
            for sample in samples:
                handle.write(json.dumps(sample_to_json(sample), ensure_ascii=False) + "\n")
                counts.samples += 1
                counts.turns += len(sample.turns)
        return counts
