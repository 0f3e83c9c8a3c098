"""The data model: image records with their annotations, and samples (conversations).

Both convert to and from plain dict rows (``to_row`` / ``from_row``) that match the Arrow schemas
``RECORD_SCHEMA`` and ``SAMPLE_SCHEMA`` used for the Parquet shards of a run directory.

Example:
    >>> record = ImageRecord(image_id="1", file_name="a.jpg", captions=["A dog."])
    >>> ImageRecord.from_row(record.to_row()) == record
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from vlit.errors import InputFileError
from vlit.images import image_location
from vlit.jsonio import loads_json
from vlit.reasons import UNDECODABLE_ROW, Reason, with_problem

# One encoder each for every row: what json.dumps with these options writes, without making an
# encoder per call.
_SORTED_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
_JSON = json.JSONEncoder(ensure_ascii=False)

Role = Literal["user", "assistant"]
ROLES: tuple[Role, Role] = ("user", "assistant")


@dataclass
class ObjectAnnotation:
    """One annotated object: COCO category and supercategory, box ``[x, y, w, h]`` in pixels."""

    category: str
    supercategory: str = ""
    bbox: list[float] | None = None
    iscrowd: bool = False
    attributes: list[str] = field(default_factory=list)
    annotation_id: int | None = None
    area: float | None = None


@dataclass
class OcrText:
    """A text string read in the image, with its box when known."""

    text: str
    bbox: list[float] | None = None
    legible: bool = True


@dataclass
class VqaPair:
    """A visual question with its human answers and their majority answer."""

    question: str
    answers: list[str] = field(default_factory=list)
    majority_answer: str = ""
    question_id: int | None = None
    answer_type: str | None = None


@dataclass
class ImageRecord:
    """One image and everything annotated about it.

    ``file_name`` is relative to ``image_root`` (both as given by the user), so a record keeps
    the dataset's own reference; ``path`` joins them. ``problems`` lists what was wrong with
    this record's input (kept, counted, never fatal).
    """

    image_id: str
    file_name: str
    image_root: str = ""
    width: int | None = None
    height: int | None = None
    captions: list[str] = field(default_factory=list)
    objects: list[ObjectAnnotation] = field(default_factory=list)
    ocr: list[OcrText] = field(default_factory=list)
    vqa: list[VqaPair] = field(default_factory=list)
    source: str = ""
    problems: list[str] = field(default_factory=list)
    # An object annotation file (COCO instances) lists this image: no objects means none of
    # its categories is there, not "unknown".
    objects_annotated: bool = False

    @property
    def path(self) -> Path:
        return Path(self.image_root) / self.file_name

    @property
    def location(self) -> str:
        """The image as a local path, or as a URL when ``image_root`` is one (``s3://...``)."""
        return image_location(self.image_root, self.file_name)

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ImageRecord:
        return cls(
            image_id=str(row["image_id"]),
            file_name=row["file_name"],
            image_root=row.get("image_root") or "",
            width=row.get("width"),
            height=row.get("height"),
            captions=list(row.get("captions") or []),
            objects=[
                ObjectAnnotation(
                    category=o["category"],
                    supercategory=o.get("supercategory") or "",
                    bbox=list(o["bbox"]) if o.get("bbox") is not None else None,
                    iscrowd=bool(o.get("iscrowd")),
                    attributes=list(o.get("attributes") or []),
                    annotation_id=o.get("annotation_id"),
                    area=o.get("area"),
                )
                for o in row.get("objects") or []
            ],
            ocr=[
                OcrText(
                    text=t["text"],
                    bbox=list(t["bbox"]) if t.get("bbox") is not None else None,
                    legible=bool(t.get("legible", True)),
                )
                for t in row.get("ocr") or []
            ],
            vqa=[
                VqaPair(
                    question=q["question"],
                    answers=list(q.get("answers") or []),
                    majority_answer=q.get("majority_answer") or "",
                    question_id=q.get("question_id"),
                    answer_type=q.get("answer_type"),
                )
                for q in row.get("vqa") or []
            ],
            source=row.get("source") or "",
            problems=list(row.get("problems") or []),
            objects_annotated=bool(row.get("objects_annotated")),
        )


@dataclass
class Turn:
    """One message of a conversation."""

    role: Role
    text: str


@dataclass
class Sample:
    """One conversation about one image (or none, for text-only data).

    ``image`` is the reference as the dataset writes it, relative to ``image_root``.
    ``provenance`` holds how the sample was made (mode, model, parameters, prompt and example
    ids, rollout index, raw LLM text on failure); ``extra`` holds source-format fields that
    vlit does not model, so exports round-trip without loss. A sample with a
    ``failure_reason`` was not produced correctly; one with a ``drop_reason`` was filtered out.
    """

    sample_id: str
    turns: list[Turn] = field(default_factory=list)
    image_id: str | None = None
    image: str | None = None
    image_root: str = ""
    mode: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    failure_reason: Reason | None = None
    drop_reason: Reason | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_path(self) -> Path | None:
        if self.image is None:
            return None
        return Path(self.image_root) / self.image

    @property
    def image_location(self) -> str | None:
        """The image as a local path, or as a URL when ``image_root`` is one (``s3://...``)."""
        if self.image is None:
            return None
        return image_location(self.image_root, self.image)

    @property
    def ok(self) -> bool:
        return self.failure_reason is None

    def to_row(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "turns": [{"role": t.role, "text": t.text} for t in self.turns],
            "image_id": self.image_id,
            "image": self.image,
            "image_root": self.image_root,
            "mode": self.mode,
            "provenance": _SORTED_JSON.encode(self.provenance),
            "scores": sorted(self.scores.items()),
            "labels": list(self.labels),
            "failure_reason": _reason_text(self.failure_reason),
            "drop_reason": _reason_text(self.drop_reason),
            "extra": _JSON.encode(self.extra),  # key order kept for exports
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Sample:
        scores = row.get("scores") or {}
        if not isinstance(scores, dict):  # Arrow map columns come back as (key, value) pairs
            scores = dict(scores)
        problems: list[Reason] = []
        provenance = _stored_object(row, "provenance", problems)
        extra = _stored_object(row, "extra", problems)
        sample = cls(
            sample_id=str(row["sample_id"]),
            turns=[Turn(role=t["role"], text=t["text"]) for t in row.get("turns") or []],
            image_id=None if row.get("image_id") is None else str(row["image_id"]),
            image=row.get("image"),
            image_root=row.get("image_root") or "",
            mode=row.get("mode") or "",
            provenance=provenance,
            scores={str(k): float(v) for k, v in scores.items()},
            labels=list(row.get("labels") or []),
            failure_reason=_stored_reason(row.get("failure_reason")),
            drop_reason=_stored_reason(row.get("drop_reason")),
            extra=extra,
        )
        for problem in problems:  # one damaged row is one failed sample, not a failed stage
            sample.failure_reason = with_problem(sample.failure_reason, problem)
        return sample

    def user_turns(self) -> list[str]:
        return [t.text for t in self.turns if t.role == "user"]

    def assistant_turns(self) -> list[str]:
        return [t.text for t in self.turns if t.role == "assistant"]


def _reason_text(reason: Reason | None) -> str | None:
    """A reason as its stored column's text (None stays None)."""
    return None if reason is None else str(reason)


def _stored_reason(text: str | None) -> Reason | None:
    """A stored reason column's value as a `Reason` (None stays None)."""
    return None if text is None else Reason.parse(str(text))


def _stored_object(row: dict[str, Any], key: str, problems: list[Reason]) -> dict[str, Any]:
    """The JSON object stored in ``row[key]`` (text or already a dict); ``{}`` with a problem
    noted when it is not one."""
    value = row.get(key) or {}
    if isinstance(value, str):
        try:
            value = loads_json(value, file=key, what=key)
        except InputFileError as error:
            problems.append(
                Reason(UNDECODABLE_ROW, f"stored {key} cannot be decoded ({error.problem})")
            )
            return {}
    if not isinstance(value, dict):
        problems.append(Reason(UNDECODABLE_ROW, f"stored {key} is not a JSON object"))
        return {}
    return value


_BOX = pa.list_(pa.float64())

RECORD_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("file_name", pa.string()),
        ("image_root", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("captions", pa.list_(pa.string())),
        (
            "objects",
            pa.list_(
                pa.struct(
                    [
                        ("category", pa.string()),
                        ("supercategory", pa.string()),
                        ("bbox", _BOX),
                        ("iscrowd", pa.bool_()),
                        ("attributes", pa.list_(pa.string())),
                        ("annotation_id", pa.int64()),
                        ("area", pa.float64()),
                    ]
                )
            ),
        ),
        (
            "ocr",
            pa.list_(pa.struct([("text", pa.string()), ("bbox", _BOX), ("legible", pa.bool_())])),
        ),
        (
            "vqa",
            pa.list_(
                pa.struct(
                    [
                        ("question", pa.string()),
                        ("answers", pa.list_(pa.string())),
                        ("majority_answer", pa.string()),
                        ("question_id", pa.int64()),
                        ("answer_type", pa.string()),
                    ]
                )
            ),
        ),
        ("source", pa.string()),
        ("problems", pa.list_(pa.string())),
        ("objects_annotated", pa.bool_()),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("turns", pa.list_(pa.struct([("role", pa.string()), ("text", pa.string())]))),
        ("image_id", pa.string()),
        ("image", pa.string()),
        ("image_root", pa.string()),
        ("mode", pa.string()),
        ("provenance", pa.string()),
        ("scores", pa.map_(pa.string(), pa.float64())),
        ("labels", pa.list_(pa.string())),
        ("failure_reason", pa.string()),
        ("drop_reason", pa.string()),
        ("extra", pa.string()),
    ]
)
