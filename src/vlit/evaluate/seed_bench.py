"""SEED-Bench questions: reading the file, the image dimensions, and per-dimension accuracy.

The file is SEED-Bench v1's JSON: ``{"questions": [...], "question_type": {name: id}}`` (a bare
list of questions is accepted too). Each question has ``question``, ``choice_a`` .. ``choice_d``,
``answer`` (a letter), ``data_id`` (the image file, relative to the image folder),
``question_type_id`` and ``data_type``. Only image questions (dimensions 1-9) are evaluated;
video questions and malformed records are skipped and counted with their reason.

Example:
    >>> questions = load_questions("SEED-Bench.json")          # doctest: +SKIP
    >>> questions.skipped_reasons()                            # doctest: +SKIP
    {'video question (only image dimensions are evaluated)': 3}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlit.errors import InputFileError
from vlit.jsonio import loads_json
from vlit.limits import FIELD_BYTES_VARIABLE, max_field_bytes

CHOICE_LETTERS: tuple[str, str, str, str] = ("A", "B", "C", "D")

# The official id -> name mapping, as SEED-Bench v1's own file lists it in "question_type"
# (note 3 = Instance Attributes and 4 = Instance Location).
SEED_BENCH_IMAGE_DIMENSIONS: dict[int, str] = {
    1: "Scene Understanding",
    2: "Instance Identity",
    3: "Instance Attributes",
    4: "Instance Location",
    5: "Instances Counting",
    6: "Spatial Relation",
    7: "Instance Interaction",
    8: "Visual Reasoning",
    9: "Text Understanding",
}

VIDEO_REASON = "video question (only image dimensions are evaluated)"


@dataclass(frozen=True)
class BenchQuestion:
    """One multiple-choice question about one image."""

    question_id: str
    question: str
    choices: tuple[str, ...]
    answer: str
    dimension_id: int
    data_id: str

    @property
    def answer_index(self) -> int:
        return CHOICE_LETTERS.index(self.answer)


@dataclass(frozen=True)
class SkippedQuestion:
    question_id: str
    reason: str


@dataclass
class QuestionSet:
    """The usable questions of a file, the skipped ones, and the dimension names."""

    questions: list[BenchQuestion]
    skipped: list[SkippedQuestion] = field(default_factory=list)
    dimension_names: dict[int, str] = field(
        default_factory=lambda: dict(SEED_BENCH_IMAGE_DIMENSIONS)
    )

    def skipped_reasons(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))


def load_questions(path: str | Path) -> QuestionSet:
    """Read a SEED-Bench question file; see the module docstring for the format."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputFileError(
            f"cannot read the question file ({error.strerror or error})",
            file=str(path),
            fix="pass the SEED-Bench JSON",
        ) from error
    data = loads_json(raw, file=path, what="SEED-Bench questions")
    if isinstance(data, dict) and isinstance(data.get("questions"), list):
        raw_questions = data["questions"]
        names = _dimension_names(data.get("question_type"))
    elif isinstance(data, list):
        raw_questions, names = data, dict(SEED_BENCH_IMAGE_DIMENSIONS)
    else:
        raise InputFileError(
            "expected an object with a 'questions' list, or a list of questions",
            file=str(path),
            fix="pass SEED-Bench's own JSON (SEED-Bench.json)",
        )
    result = QuestionSet(questions=[], dimension_names=names)
    seen: set[str] = set()
    for position, raw in enumerate(raw_questions):
        question, reason = _parse_question(raw, position, names)
        if question is None:
            qid = str(raw.get("question_id", position)) if isinstance(raw, dict) else str(position)
            result.skipped.append(SkippedQuestion(question_id=qid, reason=reason))
        elif question.question_id in seen:
            result.skipped.append(SkippedQuestion(question.question_id, "duplicate question_id"))
        else:
            seen.add(question.question_id)
            result.questions.append(question)
    return result


def _dimension_names(mapping: Any) -> dict[int, str]:
    names = dict(SEED_BENCH_IMAGE_DIMENSIONS)
    if isinstance(mapping, dict):
        for name, dimension in mapping.items():
            if isinstance(dimension, int) and dimension in names:
                names[dimension] = str(name)
    return names


def _parse_question(
    raw: Any, position: int, names: dict[int, str]
) -> tuple[BenchQuestion | None, str]:
    if not isinstance(raw, dict):
        return None, "malformed: not a JSON object"
    if raw.get("data_type", "image") != "image":
        return None, VIDEO_REASON
    required = ("question", "choice_a", "choice_b", "choice_c", "choice_d", "answer", "data_id")
    missing = [key for key in required if not isinstance(raw.get(key), str) or not raw[key]]
    if missing:
        return None, f"malformed: missing or empty {', '.join(missing)}"
    limit = max_field_bytes()
    too_long = [key for key in required if len(raw[key].encode("utf-8", "replace")) > limit]
    if too_long:
        return None, (
            f"malformed: {', '.join(too_long)} longer than {limit} bytes "
            f"(raise {FIELD_BYTES_VARIABLE} to allow it)"
        )
    answer = raw["answer"].strip().upper()
    if answer not in CHOICE_LETTERS:
        return None, f"malformed: answer '{raw['answer']}' is not one of A, B, C, D"
    try:
        dimension = int(raw.get("question_type_id"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, "malformed: question_type_id is not a number"
    if dimension not in names:
        return None, f"dimension {dimension} is not an image dimension (1-9)"
    return (
        BenchQuestion(
            question_id=str(raw.get("question_id", position)),
            question=raw["question"].strip(),
            choices=tuple(raw[f"choice_{letter.lower()}"].strip() for letter in CHOICE_LETTERS),
            answer=answer,
            dimension_id=dimension,
            data_id=raw["data_id"],
        ),
        "",
    )


@dataclass
class QuestionOutcome:
    """What the model answered to one question (``prediction`` None: no usable answer)."""

    question_id: str
    dimension_id: int
    answer: str
    prediction: str | None
    scores: list[float] | None = None
    raw_output: str | None = None

    @property
    def correct(self) -> bool:
        return self.prediction == self.answer

    def to_json(self) -> dict[str, Any]:
        return {
            "question_id": self.question_id,
            "dimension_id": self.dimension_id,
            "answer": self.answer,
            "prediction": self.prediction,
            "correct": self.correct,
            "scores": self.scores,
            "raw_output": self.raw_output,
        }


def accuracy_table(
    outcomes: list[QuestionOutcome], names: dict[int, str]
) -> dict[str, dict[str, float | int]]:
    """Per-dimension ``correct``, ``total`` and ``accuracy`` (percent, as SEED-Bench reports).

    A question without a usable answer counts as answered wrongly (it stays in ``total``).
    """
    table: dict[str, dict[str, float | int]] = {}
    for dimension in sorted({o.dimension_id for o in outcomes}):
        rows = [o for o in outcomes if o.dimension_id == dimension]
        correct = sum(o.correct for o in rows)
        table[names.get(dimension, str(dimension))] = {
            "dimension_id": dimension,
            "correct": correct,
            "total": len(rows),
            "accuracy": 100.0 * correct / len(rows),
        }
    return table
